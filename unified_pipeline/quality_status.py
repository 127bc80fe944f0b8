"""The last Great Expectations verdict of each dataset, read from the Dagster instance.

The `great_expectations` check of `<dataset>/manifest` is the only place the verdict
is recorded, so the instance's asset-check history is the source of truth.
"""
from __future__ import annotations

import time
from typing import Any

PASSED, FAILED, NOT_RUN, UNKNOWN = "passed", "failed", "not run", "unknown"


def latest_verdicts(datasets: list[str]) -> dict[str, dict[str, Any]]:
    """Dataset -> {"status": passed | failed | not run, "run_id", "when"} (the last two when it ran).

    An instance that cannot be read gives "unknown" with the reason, not a failed command.
    """
    if not datasets:
        return {}
    try:
        return _read_verdicts(datasets)
    except Exception as exc:  # noqa: BLE001 - e.g. a dagster.yaml pointing at an unreachable database
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        return {name: {"status": UNKNOWN, "reason": reason} for name in datasets}


def _read_verdicts(datasets: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {name: {"status": NOT_RUN} for name in datasets}
    from dagster import AssetCheckKey
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    from unified_pipeline.assets.data_assets import QUALITY_CHECK, manifest_key
    from unified_pipeline.dagster_home import open_instance

    finished = {Status.SUCCEEDED, Status.FAILED}
    with open_instance() as instance:
        if instance is None:
            return out
        for name in datasets:
            key = AssetCheckKey(manifest_key(name), QUALITY_CHECK)
            # A run in progress has a PLANNED record first; the verdict is the newest finished one.
            history = instance.event_log_storage.get_asset_check_execution_history(key, limit=1, status=finished)
            if history:
                record = history[0]
                out[name] = {
                    "status": PASSED if record.status == Status.SUCCEEDED else FAILED,
                    "run_id": record.run_id,
                    "when": time.strftime("%Y-%m-%d %H:%M", time.localtime(record.create_timestamp)),
                }
    return out
