"""The one Definitions object: data lanes, model assets, checks, jobs, schedule, sensor.

Kept cheap to import (no torch): every step of the multiprocess executor imports it.
"""
from __future__ import annotations

import os
import warnings

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    multiprocess_executor,
)

from unified_pipeline import celery_mode, devices, install_check, instance_notice
from unified_pipeline.assets.data_assets import tensors_key
from unified_pipeline.assets.graph import data_lanes, data_selection, trainable_models
from unified_pipeline.assets.json_io import JsonIOManager
from unified_pipeline.assets.rollback_job import rollback_model
from unified_pipeline.assets.model_assets import DEFAULT_SCENARIO, SCENARIO_TAG, model_asset, model_key
from unified_pipeline.assets.summary_asset import SUMMARY_KEY, summary_asset
from unified_pipeline.assets.automation import new_data_sensor, retrain_schedule
from unified_pipeline.k8s import k8s_executor, use_k8s
from unified_pipeline.models.registry import ModelEntry
from unified_pipeline.presets import ALL_DATASETS, load_preset
from unified_pipeline.training.preemption import retry_policy as preemption_retry_policy
from unified_pipeline.version_reasons import model_code_version

warnings.filterwarnings("ignore", category=UserWarning, module="dagster")
try:  # beta / preview warnings of observable source assets and checks
    from dagster import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
except ImportError:  # pragma: no cover
    pass

DATA_JOB = "data_lane"
MAIN_JOB = "collaborative_training"


def executor_config() -> dict:
    """Model steps (device-tagged) never exceed the device slots; data steps fill the rest."""
    return {
        "max_concurrent": max(devices.total_slots() + 2, 2),
        "start_method": {"forkserver": {"preload_modules": ["dagster._core.executor.multiprocess",
                                                            "unified_pipeline.step_preload"]}},
        "tag_concurrency_limits": [
            {"key": devices.DEVICE_TAG, "value": devices.DEVICE_TAG_VALUE, "limit": devices.total_slots()}
        ],
    }


def _executor():
    if use_k8s():
        return k8s_executor(executor_config()["tag_concurrency_limits"])
    if celery_mode.use_celery():  # a worker's concurrency equals its device slots (cluster/)
        return celery_mode.celery_executor()
    return multiprocess_executor.configured(executor_config())


def build_definitions() -> Definitions:
    install_check.check_at_code_location_load()  # one line here instead of an EOFError per step
    instance_notice.say_once()  # a run on a throwaway instance vanishes: say so before it starts
    preset = load_preset()
    refs, data_assets = data_lanes(preset.preprocess)
    prefs = {m: list(p.get("datasets", [])) for m, p in preset.model_specific_presets.items()}
    models, entries = trainable_models(refs, prefs)
    advised = {a: [m for m in models if a in entries[m].advisors] for a in models}
    tc = preset.training_configuration
    retry = preemption_retry_policy(tc.preemption_retries, tc.preemption_retry_delay_s)
    readers = _readers_by_dataset(models, entries)
    model_assets = [
        model_asset(entries[m], ds, advisors=[a for a in entries[m].advisors if a in models], advised=advised[m],
                    retry_policy=retry, watch=[d for d, names in readers.items() if m in names],
                    code_version=model_code_version(entries[m], preset, DEFAULT_SCENARIO))
        for m, ds in models.items()
    ]
    if models:
        model_assets.append(summary_asset(list(models)))

    jobs = [
        define_asset_job(
            DATA_JOB,
            selection=data_selection(refs),
            description="Observe, validate and preprocess every dataset.",
        )
    ]
    for scenario in preset.training_scenarios:
        names = [m for m in preset.available_models_for(scenario) if m in models]
        if not names:
            continue
        wanted_ds = preset.datasets_for(scenario, [r.name for r in refs])  # unknown names: ConfigError listing valid ones
        if ALL_DATASETS not in preset.scenario(scenario).datasets:
            # Restrict to the scenario's datasets: models reading others are left out of the job.
            names = [m for m in names if set(models[m]) <= set(wanted_ds)]
        selection = _with_requirements(names, models, entries)
        jobs.append(
            define_asset_job(
                scenario,
                # Every scenario ends in the run summary, so `unified-pipeline results` has its report.
                selection=selection | AssetSelection.assets(SUMMARY_KEY),
                tags={SCENARIO_TAG: scenario},
                description=preset.scenario(scenario).description,
            )
        )

    jobs.append(rollback_model)

    schedules, sensors = [], []
    if any(j.name == MAIN_JOB for j in jobs):
        schedules.append(retrain_schedule(MAIN_JOB))
        sensors.append(new_data_sensor(MAIN_JOB, refs, readers, also=(SUMMARY_KEY,)))

    return Definitions(
        assets=data_assets + model_assets,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        executor=_executor(),
        resources={"io_manager": JsonIOManager(base_dir=os.environ.get("UNIFIED_ASSET_STORE", ""))},
    )


def _with_requirements(names: list[str], models: dict[str, list[str]], entries: dict[str, ModelEntry]) -> AssetSelection:
    """The models, the upstream models they need, and those models' data lanes. Advisors (an
    ordering edge only) join a job only when the scenario targets them."""
    needed: list[str] = []
    todo = list(names)
    while todo:
        m = todo.pop()
        if m not in needed:
            needed.append(m)
            todo += [u for u in entries[m].upstream_models if u in models]
    lanes = {ds for m in needed for ds in models[m]}
    return (AssetSelection.assets(*[model_key(m) for m in needed])
            | AssetSelection.assets(*[tensors_key(ds) for ds in sorted(lanes)]).upstream())


def _readers_by_dataset(models: dict[str, list[str]], entries: dict[str, ModelEntry]) -> dict[str, list[str]]:
    """Dataset -> every model that depends on it, directly or through an upstream model."""
    out: dict[str, list[str]] = {}
    for name in models:  # registry order puts upstream models first
        needed = set(models[name])
        for up in entries[name].upstream_models:
            needed |= {ds for ds, readers in out.items() if up in readers}
        for ds in needed:
            out.setdefault(ds, []).append(name)
    return out


defs = build_definitions()
