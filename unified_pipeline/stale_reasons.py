"""Why each model is stale or up to date before it runs, as Dagster itself computes it.

Dagster's stale-status resolver (what the UI's "Stale" popover shows) compares each asset's last
materialisation with its current code version and the data versions of its direct dependencies.
This module only words its causes by kind of input: data (raw files, tensors), code, preset
hyperparameters (both in the model's code version, see version_reasons.model_code_version) or an
upstream model.
"""
from __future__ import annotations

from typing import Any

from unified_pipeline.version_reasons import code_version_change

UP_TO_DATE, STALE, NEVER = "up to date", "stale", "never materialised"


def model_staleness(instance: Any, defs: Any) -> dict[str, dict[str, Any]]:
    """Model -> {"state": up to date | stale | never materialised, "reasons": [...]} for every model of `defs`."""
    from dagster import AssetKey
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    from unified_pipeline.models.registry import MODELS

    graph = defs.resolve_asset_graph()
    now = TemporalContext(effective_dt=get_current_datetime(), last_event_id=None)
    resolver = CachingStaleStatusResolver(instance, graph, AssetGraphView(temporal_context=now, instance=instance,
                                                                          asset_graph=graph))
    out = {}
    for model in MODELS:
        key = AssetKey([model])
        if not graph.has(key):
            continue
        status = resolver.get_status(key)
        if status == StaleStatus.MISSING:
            out[model] = {"state": NEVER, "reasons": ["no materialisation yet: the next run trains it"]}
        elif status == StaleStatus.FRESH:
            out[model] = {"state": UP_TO_DATE, "reasons": [
                "code, preset hyperparameters and every input's data version match its last materialisation"]}
        else:
            causes = resolver.get_stale_causes(key)
            out[model] = {"state": STALE, "reasons": [_words(instance, graph, key, c) for c in causes]}
    return out


def _words(instance: Any, graph: Any, key: Any, cause: Any) -> str:
    from dagster._core.definitions.data_version import StaleCauseCategory

    dep = cause.dependency.asset_key if cause.dependency is not None else None
    if cause.category == StaleCauseCategory.CODE and dep is None:
        recorded = _recorded_code_version(instance, key)
        return code_version_change(recorded, graph.get(key).code_version)
    if dep is None:
        return cause.reason
    name = dep.to_user_string()
    if cause.category == StaleCauseCategory.DATA:
        if dep.path[-1] == "raw_files":
            return f"data changed: the files of {dep.path[0]} have a new data version"
        if len(dep.path) == 2:
            return f"data changed: {name} has a new data version"
        return f"upstream model changed: {name} has a new version"
    return f"{name}: {cause.reason}"  # a dependency added or removed since the last materialisation


def _recorded_code_version(instance: Any, key: Any) -> str | None:
    from dagster._core.definitions.data_version import CODE_VERSION_TAG

    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event is not None else None
    return (materialization.tags or {}).get(CODE_VERSION_TAG) if materialization is not None else None
