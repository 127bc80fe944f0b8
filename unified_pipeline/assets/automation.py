"""Retraining on new data: a sensor on the raw datasets and a schedule for the main job."""
from __future__ import annotations

import json
import os

from dagster import (
    AssetKey,
    AssetObservation,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from unified_pipeline.assets.data_assets import hash_cache, manifest_key, raw_key, tensors_key
from unified_pipeline.datasets import DatasetRef
from unified_pipeline.hashing import dataset_version

DATA_VERSION_TAG = "dagster/data_version"


def retrain_schedule(job_name: str) -> ScheduleDefinition:
    return ScheduleDefinition(
        name=f"{job_name}_schedule",
        job_name=job_name,
        cron_schedule=os.environ.get("UNIFIED_RETRAIN_CRON", "0 3 * * *"),
        default_status=DefaultScheduleStatus.RUNNING,
        description="Runs the main training job; unchanged models are reused, so a quiet day costs seconds.",
    )


def last_materialised_version(instance, dataset: str) -> str | None:
    """The raw data version the dataset's manifest was last built from (None: never built)."""
    event = instance.get_latest_materialization_event(manifest_key(dataset))
    materialization = event.asset_materialization if event is not None else None
    return (materialization.tags or {}).get(DATA_VERSION_TAG) if materialization is not None else None


def new_data_sensor(job_name: str, refs: list[DatasetRef], downstream: dict[str, list[str]],
                    also: tuple[AssetKey, ...] = ()):
    """Requests a run for the lanes whose data version changed, and the models that read them.

    The cursor holds the last seen data version per dataset. Each observed version is also
    recorded as an observation of the dataset's raw_files asset, so the UI shows what is stale.
    `downstream` maps dataset name -> model asset names that read it (directly or through
    upstream models). `also`: assets every request includes (the run summary).
    """

    @sensor(
        name="new_data_sensor",
        job_name=job_name,
        minimum_interval_seconds=int(os.environ.get("UNIFIED_SENSOR_INTERVAL", "60")),
        default_status=DefaultSensorStatus.RUNNING,
        description="Watches data/raw; retrains only the lanes whose files changed.",
    )
    def _sensor(context: SensorEvaluationContext):
        seen = json.loads(context.cursor) if context.cursor else {}
        current = {}
        cache = hash_cache()
        for ref in refs:
            if ref.root.is_dir():
                current[ref.name] = dataset_version(ref.root, cache)[0]
        for ds in current:
            if ds not in seen:  # first tick (or a new lane): compare with what was last materialised
                seen[ds] = last_materialised_version(context.instance, ds)
        changed = sorted(ds for ds, v in current.items() if seen.get(ds) != v)
        if not changed:
            return SensorResult(skip_reason=SkipReason("no dataset changed since its last materialisation"),
                                cursor=json.dumps(current, sort_keys=True))
        events = [AssetObservation(asset_key=raw_key(ds), tags={DATA_VERSION_TAG: current[ds]}) for ds in changed]
        keys = set(also)
        for ds in changed:
            keys |= {manifest_key(ds), tensors_key(ds)}
            keys |= {AssetKey([m]) for m in downstream.get(ds, [])}
        request = RunRequest(
            run_key="data:" + ",".join(f"{ds}={current[ds][:12]}" for ds in changed),
            asset_selection=sorted(keys, key=lambda k: k.to_user_string()),
            tags={"unified/trigger": "new_data", "unified/datasets": ",".join(changed)[:200]},
        )
        return SensorResult(run_requests=[request], asset_events=events, cursor=json.dumps(current, sort_keys=True))

    return _sensor
