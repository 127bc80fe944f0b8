"""Evidence a version needs before `production` may point at it.

Three conditions, each recorded with the version (`lineage["evidence"]`) so `models show` can list them:

- data_quality: every data version it trained on passed its Great Expectations suite. The
  blocking check of `<dataset>/manifest` leaves its verdict per data version under
  `<home>/quality/<dataset>/<data version[:16]>.json` (`record_verdict`); a data version
  without one (tensors built outside the data lane) counts as not validated;
- asset_check: the model's own `reaches_threshold` check passed (the same verdict the asset
  check reports, computed before registering);
- rule: the promotion rule holds (better_or_equal, strictly_better, always, never).

The gate is on when the preset's `promotion_gate` is (the default). A manual promotion of a
version whose evidence falls short is refused unless forced with a reason, and the override is
written to the append-only event log. Versions registered without evidence (by hand, through
`ModelRegistry.register`) carry none to check.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from unified_pipeline import atomic
from unified_pipeline.paths import unified_home

PASSED, FAILED, NOT_VALIDATED = "passed", "failed", "not validated"


def verdict_path(dataset: str, data_version: str) -> Path:
    return unified_home() / "quality" / dataset / f"{data_version[:16]}.json"


def record_verdict(dataset: str, data_version: str, passed: bool, *, run_id: str = "", summary: str = "") -> Path:
    """Called by the blocking GX check: the verdict for exactly this data version."""
    return atomic.write_json(verdict_path(dataset, data_version), {
        "dataset": dataset, "data_version": data_version, "status": PASSED if passed else FAILED,
        "run_id": run_id, "at": time.time(), "summary": summary[:500]})


def data_quality(tensor_dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Dataset -> {data_version, status, run_id} for the raw data behind each tensor folder."""
    out = {}
    for ds, folder in sorted(tensor_dirs.items()):
        try:
            version = json.loads((Path(folder) / "meta.json").read_text()).get("data_version") or ""
        except (OSError, ValueError):
            version = ""
        entry: dict[str, Any] = {"data_version": version[:16], "status": NOT_VALIDATED}
        if version:
            try:
                found = json.loads(verdict_path(ds, version).read_text())
                entry.update(status=found.get("status", NOT_VALIDATED), run_id=found.get("run_id", ""))
            except (OSError, ValueError):
                pass
        out[ds] = entry
    return out


def collect(tensor_dirs: dict[str, Path], check: tuple[bool, dict[str, Any]]) -> dict[str, Any]:
    """Evidence known before registering; the registry adds the rule's verdict."""
    passed, meta = check
    return {"data_quality": data_quality(tensor_dirs), "asset_check": {"name": "reaches_threshold", "passed": passed, **meta}}


def shortfalls(evidence: dict[str, Any] | None, include_rule: bool = True) -> list[str]:
    """Why the evidence does not allow production (empty: it does)."""
    if not evidence:
        return []
    out = [f"data {ds} version {e.get('data_version') or '?'}: Great Expectations {e.get('status')}"
           for ds, e in sorted((evidence.get("data_quality") or {}).items()) if e.get("status") != PASSED]
    check = evidence.get("asset_check") or {}
    if check and not check.get("passed"):
        out.append(f"asset check {check.get('name')} failed ({check.get('metric')} {check.get('value')} "
                   f"vs threshold {check.get('threshold')})")
    rule = evidence.get("rule") or {}
    if include_rule and rule and not rule.get("holds"):
        out.append(f"promotion rule {rule.get('name')}: {rule.get('why')}")
    return out


def lines(evidence: dict[str, Any] | None) -> list[str]:
    """The card's "Evidence" section."""
    if not evidence:
        return ["  (none recorded: registered without the promotion gate)"]
    out = []
    for ds, e in sorted((evidence.get("data_quality") or {}).items()):
        run = f", run {e['run_id'][:8]}" if e.get("run_id") else ""
        out.append(f"  data {ds} {e.get('data_version') or '?'}: Great Expectations {e.get('status')}{run}")
    check = evidence.get("asset_check") or {}
    if check:
        out.append(f"  asset check {check.get('name')}: {'passed' if check.get('passed') else 'failed'} "
                   f"({check.get('metric')} {check.get('value')} vs threshold {check.get('threshold')})")
    rule = evidence.get("rule") or {}
    if rule:
        out.append(f"  promotion rule {rule.get('name')}: {'holds' if rule.get('holds') else 'does not hold'} "
                   f"({rule.get('why')})")
    missing = shortfalls(evidence)
    out.append("  verdict: " + ("may be production" if not missing else "may not be production without --force"))
    return out
