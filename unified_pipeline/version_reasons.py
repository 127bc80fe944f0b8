"""Why a model version was trained, or why a step reused it: which of its inputs changed.

Plain Python (no Dagster) so that `unified-pipeline status` can say it as well as the UI.
"""
from __future__ import annotations

from typing import Any

# Hyperparameters that say how a run was carried out, not what it computed; left out of the reasons.
_HOW_NOT_WHAT = {"adaptive_strategy", "checkpoint_interval", "keep_last", "compile", "use_gpu", "precision",
                 "promotion_rule", "keep_versions", "advised_presets"}


def model_code_version(entry: Any, preset: Any, scenario: str) -> str:
    """A model asset's Dagster code version: `code:<digest of the code it runs> hparams:<digest of
    the preset's hyperparameters for it>`, so Dagster marks the asset stale when either changes and
    `code_version_change` can say which."""
    import json

    from unified_pipeline.code_version import code_version
    from unified_pipeline.hashing import combine

    code = code_version(entry.module, "unified_pipeline.models.base", packages=("training",))
    hparams = {k: v for k, v in preset.hparams(scenario, entry.name).items()
               if k not in _HOW_NOT_WHAT | {"promotion_gate"} and not k.startswith("warm_start")}
    return f"code:{code[:12]} hparams:{combine([json.dumps(hparams, sort_keys=True, default=str)])[:12]}"


def code_version_change(old: str | None, new: str | None) -> str:
    """What differs between two model code versions (see model_code_version)."""
    def parts(v: str | None) -> dict[str, str]:
        return dict(p.split(":", 1) for p in (v or "").split() if ":" in p)

    before, after = parts(old), parts(new)
    changed = [name for name in ("code", "hparams") if before.get(name) != after.get(name)]
    if not before or not changed:
        return f"code version {old} -> {new}"
    words = {"code": "code changed", "hparams": "preset hyperparameters changed"}
    return " and ".join(f"{words[c]} ({before.get(c, '-')} -> {after.get(c, '-')})" for c in changed)


def _diff(old: dict[str, Any], new: dict[str, Any], skip: set[str] = frozenset()) -> list[str]:
    keys = sorted((set(old) | set(new)) - skip)
    return [f"{k} {old.get(k, '-')} -> {new.get(k, '-')}" for k in keys if old.get(k) != new.get(k)]


def change_reasons(previous: Any, version: Any) -> list[str]:
    """Which inputs of `version` differ from `previous`'s: data, code, hyperparameters, upstream models."""
    if previous is None:
        return ["first version of this model"]
    old, new = previous.lineage or {}, version.lineage or {}
    reasons = []
    data = _diff(old.get("data_versions") or {}, new.get("data_versions") or {})
    if data:
        reasons.append("data changed: " + "; ".join(data))
    if old.get("code_version") != new.get("code_version"):
        reasons.append(f"code changed ({str(old.get('code_version'))[:12]} -> {str(new.get('code_version'))[:12]})")
    hp = _diff(old.get("hparams") or {}, new.get("hparams") or {}, _HOW_NOT_WHAT | {"warm_start"})
    if hp:
        reasons.append("hyperparameters changed: " + "; ".join(hp))
    up = _diff(old.get("upstream") or {}, new.get("upstream") or {})
    if up:
        reasons.append("upstream model changed: " + "; ".join(up))
    return reasons or [f"same inputs as {previous.name}: retrained on request (force_retrain)"]


def why(registry: Any, version: Any, reused: bool) -> str:
    """One line: why this materialisation trained, or why it is up to date."""
    if reused:
        return (f"up to date: data versions, code, hyperparameters and upstream models match {version.name}"
                + (f" (trained in run {str(version.lineage.get('run_id'))[:8]})" if version.lineage.get("run_id") else ""))
    earlier = [v for v in registry.list(version.model) if v.number < version.number]
    return "trained: " + "; ".join(change_reasons(earlier[-1] if earlier else None, version))


def latest_reasons(registry: Any) -> list[dict[str, Any]]:
    """For every model's newest version: its name, aliases and why it was trained."""
    out = []
    for model in registry.models():
        versions = registry.list(model)
        if versions:
            newest = versions[-1]
            out.append({"model": model, "version": newest.name, "aliases": list(newest.aliases or []),
                        "why": why(registry, newest, reused=False)})
    return out
