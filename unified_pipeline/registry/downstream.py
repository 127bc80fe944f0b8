"""Models whose production version was trained on another model's version that is no longer production.

The multimodal model reads its encoders' weights, the student its teacher's: their lineage
names those versions (`upstream`). When a rollback moves an upstream model's production away
from the version a downstream production was trained on, the downstream model is stale: its
next run retrains it on the restored upstream. `mark_stale` writes a `stale` event into each
such model's append-only log; `stale_models` derives the same facts at any time.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from unified_pipeline.registry.index import append_event
from unified_pipeline.registry.locking import model_lock
from unified_pipeline.registry.versions import RegistryError


def stale_models(registry: Any, upstream: str | None = None) -> list[dict[str, Any]]:
    """[{model, version, upstream, trained_on, production_now}] for every stale production version."""
    productions = {}
    for m in registry.models():
        try:
            productions[m] = registry.get(m, "production")
        except RegistryError:
            continue
    out = []
    for m, v in productions.items():
        for up, used in sorted((v.lineage.get("upstream") or {}).items()):
            if upstream is not None and up != upstream:
                continue
            now = productions.get(up)
            if now is not None and now.name != used:
                out.append({"model": m, "version": v.name, "upstream": up, "trained_on": used,
                            "production_now": now.name})
    return out


def mark_stale(registry: Any, upstream: str, who: str, reason: str = "") -> list[dict[str, Any]]:
    """After `upstream`'s production moved: log a `stale` event on every production trained on another version."""
    found = stale_models(registry, upstream)
    at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    for s in found:
        mdir = registry.root / s["model"]
        with model_lock(mdir):
            append_event(mdir, {"event": "stale", "version": s["version"], "at": at, "who": who,
                                "reason": f"trained on {s['trained_on']}; {upstream} production is now "
                                          f"{s['production_now']}" + (f" ({reason})" if reason else ""),
                                "upstream": s["upstream"], "trained_on": s["trained_on"],
                                "production_now": s["production_now"]})
    return found


def describe(found: list[dict[str, Any]]) -> list[str]:
    return [f"{s['version']} is now stale: trained on {s['trained_on']}, {s['upstream']} production is "
            f"{s['production_now']}; its next run retrains it" for s in found]
