"""One asset per registered model, generated from models/registry.py."""

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    Config,
    DataVersion,
    Failure,
    MetadataValue,
    Output,
    asset,
)

from unified_pipeline import celery_mode, devices
from unified_pipeline.assets.data_assets import raw_key, tensors_key
from unified_pipeline.errors import ConfigError
from unified_pipeline.k8s import gpu_step_tags
from unified_pipeline.models.registry import ModelEntry

SCENARIO_TAG = "unified/scenario"
DEFAULT_SCENARIO = "collaborative_training"
THRESHOLD_CHECK = "reaches_threshold"


class TrainConfig(Config):
    """Run-config overrides (`-c`), applied on top of the preset scenario."""

    scenario: str = ""
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None
    checkpoint_interval: Optional[int] = None
    early_stopping_patience: Optional[int] = None
    seed: Optional[int] = None
    force_retrain: bool = False
    threshold: Optional[float] = None
    preset_path: str = ""
    # Any other hyperparameter of the model or the trainer (dropout, widths, promotion_rule, ...).
    hparams: Dict[str, Any] = {}

NAMED_OVERRIDES = ("epochs", "batch_size", "learning_rate", "checkpoint_interval", "early_stopping_patience", "seed")


def config_class(entry: ModelEntry) -> type[TrainConfig]:
    """TrainConfig whose `hparams` lists the model's keys (models/spec.py), so Dagster refuses a
    misspelt one when the run is launched, before any step; plain TrainConfig (checked by the
    step) when the model's source does not spell its settings out."""
    from pydantic import create_model

    from unified_pipeline.models.spec import declared_setting_names, valid_keys

    names = declared_setting_names(entry.module)
    if names is None:
        return TrainConfig
    hparams = create_model(f"{entry.name}_hparams", __base__=Config,
                           **{k: (Optional[Any], None) for k in sorted(valid_keys(names))})
    return create_model(f"{entry.name}_config", __base__=TrainConfig, hparams=(hparams, hparams()))


def hparams_of(config: TrainConfig) -> dict[str, Any]:
    """The `hparams` the run config set (a dict, or the typed section of `config_class`, whose
    unset keys read None)."""
    section = config.hparams
    if isinstance(section, dict):
        return dict(section)
    return {k: getattr(section, k) for k in section.model_fields_set if getattr(section, k) is not None}


def run_config_overrides(config: TrainConfig, entry: ModelEntry) -> dict[str, Any]:
    """The run config's values; a key that neither the model, the trainer nor the pipeline reads is refused."""
    hparams = hparams_of(config)
    entry.spec().check_keys(hparams, f"{entry.name}: run config hparams")
    named = {k: getattr(config, k) for k in NAMED_OVERRIDES if getattr(config, k) is not None}
    return {**hparams, **named}


# Values worth one line at the start of every model step, with where each came from.
LOGGED_HPARAMS = ("epochs", "batch_size", "learning_rate", "early_stopping_patience", "seed")


def resolved_line(model: str, preset_path: Path, scenario: str, hparams: dict, sources: dict) -> str:
    shown = [k for k in LOGGED_HPARAMS if k in hparams] + sorted(
        k for k, src in sources.items() if src == "run config" and k not in LOGGED_HPARAMS)
    values = ", ".join(f"{k}={hparams[k]} ({sources.get(k, 'model default')})" for k in shown)
    return f"{model}: preset {preset_path}, scenario {scenario}: {values}"


def data_settings_ignored(preset: Any) -> list[str]:
    """`preset_path` reaches the model steps only: the data steps were built from $UNIFIED_PRESET."""
    from unified_pipeline.presets import default_preset_path, load_preset

    loaded = load_preset(default_preset_path())
    out = []
    for key in ("data_configuration", "data_preprocessing"):
        if getattr(preset, key) != getattr(loaded, key):
            out.append(f"preset_path: its {key} differs from {default_preset_path()}'s, which the data steps "
                       f"use; set UNIFIED_PRESET to that file to apply it to the data steps too")
    return out


def quality_verdict(entry: ModelEntry, metrics: dict, threshold: float | None) -> tuple[bool, dict]:
    """The test metric reaches the threshold and, where the run trained a baseline on the same
    split (text n-gram model, from-scratch twin, student without teacher), beats it.

    A model whose headline cannot be computed on the data it got (no ground truth, say) names the
    metric to check instead, and why, under metrics["check"]; a None threshold leaves only the baseline.
    """
    rule = metrics.get("check") if isinstance(metrics.get("check"), dict) else {}
    metric = rule.get("metric", entry.metric)
    higher = rule.get("higher_is_better", entry.higher_is_better)
    threshold = rule.get("threshold") if rule else threshold
    value = metrics.get("test", {}).get(metric)
    baseline = metrics.get("baseline", {}).get(metric)
    better = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
    ok = isinstance(value, (int, float)) and value == value and (threshold is None or better(value, threshold))
    meta: dict = {"metric": metric, "value": float(value) if isinstance(value, (int, float)) else float("nan")}
    if threshold is not None:
        meta["threshold"] = float(threshold)
    if rule.get("why"):
        meta["why_this_metric"] = rule["why"]
    if isinstance(baseline, (int, float)):
        meta["baseline"] = float(baseline)
        ok = ok and isinstance(value, (int, float)) and value != baseline and better(value, baseline)
    elif threshold is None:
        ok = False  # nothing to compare with
    return bool(ok), meta


def model_key(name: str) -> AssetKey:
    return AssetKey([name])


def _input_name(dataset: str) -> str:
    return f"data_{dataset}"


def model_asset(entry: ModelEntry, datasets: list[str], advisors: Sequence[str] = (), advised: Sequence[str] = (),
                retry_policy: Any = None, watch: Sequence[str] = (), code_version: Optional[str] = None) -> Any:
    """advisors: models (present in this graph) whose output may tune this one's hyperparameters;
    advised: models this one advises (it is given their resolved presets);
    retry_policy: applies to preemption only (training/preemption.py); other errors are not retried;
    watch: every dataset the model depends on, directly or through upstream models. Its raw files
    are a dependency too, so an edited file shows this model as stale in the UI, not only the
    manifest one step downstream of the files (Dagster compares direct dependencies only);
    code_version: version_reasons.model_code_version, so Dagster names code or hyperparameter changes."""
    config_cls = config_class(entry)
    ins = {_input_name(ds): AssetIn(tensors_key(ds)) for ds in datasets}
    ins.update({f"model_{m}": AssetIn(model_key(m)) for m in entry.upstream_models})

    @asset(
        key=model_key(entry.name),
        ins=ins,
        # Ordering only: the advice is read from the registry. Raw files: for staleness, see above.
        deps=[model_key(a) for a in advisors] + [raw_key(ds) for ds in sorted(set(watch) | set(datasets))],
        group_name=entry.group,
        code_version=code_version,
        kinds={"pytorch"},
        op_tags={devices.DEVICE_TAG: devices.DEVICE_TAG_VALUE, **gpu_step_tags(), **celery_mode.model_step_tags()},
        retry_policy=retry_policy,
        description=f"{entry.description}. Trains (or reuses an identical version), registers a model version.",
        check_specs=[
            AssetCheckSpec(
                THRESHOLD_CHECK,
                asset=model_key(entry.name),
                description=f"test {entry.metric} {'>=' if entry.higher_is_better else '<='} threshold",
            )
        ],
    )
    def _model(context: AssetExecutionContext, config: config_cls, **inputs: dict):
        from unified_pipeline.presets import check_model_settings, default_preset_path, load_preset
        from unified_pipeline.registry import preset_lineage
        from unified_pipeline.train_model import NON_SEMANTIC_HPARAMS, train_or_reuse
        from unified_pipeline.training.cost import metadata_numbers as cost_metadata
        from unified_pipeline.training.preemption import StepPreempted

        try:  # config errors too: they must not be retried (see below)
            preset_path = Path(config.preset_path) if config.preset_path else default_preset_path()
            preset = load_preset(preset_path)
            preset_info = preset_lineage(preset.preset_name, preset.preset_version, preset_path)
            scenario = config.scenario or context.run.tags.get(SCENARIO_TAG, DEFAULT_SCENARIO)
            if not config.scenario and entry.name not in preset.available_models_for(scenario):
                # An upstream model pulled into another scenario's job keeps the main settings, so it is reused.
                scenario = DEFAULT_SCENARIO
            preset_hparams, sources = preset.hparams_with_sources(scenario, entry.name)
            try:
                check_model_settings(preset, [entry.name], preset_path)
                overrides = run_config_overrides(config, entry)
            except ConfigError as exc:  # the message says it all; a traceback would bury it
                raise Failure(description=str(exc), allow_retries=False) from None
            hparams = {**preset_hparams, **overrides}  # what preset.hparams(..., overrides) gives, resolved once
            sources.update({k: "run config" for k in overrides})
            context.log.info(resolved_line(entry.name, preset_path, scenario, hparams, sources))
            if config.preset_path:
                for line in data_settings_ignored(preset):
                    context.log.warning(line)
            if advised:
                hparams["advised_presets"] = {  # only what changes a result, so the fingerprint ignores the rest
                    m: {k: v for k, v in preset.hparams(scenario, m).items() if k not in NON_SEMANTIC_HPARAMS}
                    for m in advised
                }
            tensor_dirs = {ds: Path(inputs[_input_name(ds)]["path"]) for ds in datasets}
            outcome = train_or_reuse(
                entry.name, tensor_dirs, hparams, run_id=context.run_id, log=context.log,
                force=config.force_retrain, scenario=scenario, preset_info=preset_info,
                advisors=tuple(advisors), fixed=set(overrides),
                # The weights the upstream assets produced in this graph, promoted to production or not.
                upstream={m: inputs[f"model_{m}"]["version"] for m in entry.upstream_models},
                threshold=config.threshold,
            )
        except StepPreempted as exc:
            context.log.warning(f"{entry.name}: {exc} (attempt {context.retry_number + 1})")
            if context.retry_number >= (retry_policy.max_retries if retry_policy is not None else 0):
                from unified_pipeline.error_report import write_error_report

                # No retry left: the report names the resume command (`train --resume`).
                write_error_report(entry.name, context.run_id, context.job_name, exc, run=context.run)
            raise  # the retry policy retries it; the retry resumes from the checkpoint
        except BaseException as exc:
            from unified_pipeline.error_report import write_error_report

            report = write_error_report(entry.name, context.run_id, context.job_name, exc, run=context.run)
            context.log.error(f"{entry.name}: failed; report with traceback and resume command: {report}")
            if retry_policy is not None and isinstance(exc, Exception) and not isinstance(exc, Failure):
                # Only preemption is retried: a bad setting or bad data would fail again.
                raise Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc
            raise
        from unified_pipeline.assets.model_metadata import report_markdown, version_metadata
        from unified_pipeline.registry import ModelRegistry

        registry = ModelRegistry()
        version = registry.resolve(outcome.version)
        metadata: dict[str, Any] = {
            "version": outcome.version,
            "status": "up to date (reused)" if outcome.reused else "trained",
            "promotion": outcome.promotion_note,
            "device": outcome.device,
            "fingerprint": outcome.fingerprint[:16],
            "data_versions": MetadataValue.json(outcome.data_versions),
            **version_metadata(version, registry, outcome.reused),
            "hyperparameters": MetadataValue.json(hparams if not outcome.reused else version.lineage.get("hparams", hparams)),
            "hyperparameter_sources": MetadataValue.json(sources),
            "warm_start": MetadataValue.json(outcome.warm_start or {}),
            "strategy": MetadataValue.json(outcome.strategy or {}),
        }
        metadata["report"] = MetadataValue.md(report_markdown(version, metadata["why"]))
        metadata.update(cost_metadata(outcome.cost))
        if outcome.preemptions:
            metadata["preemptions"] = MetadataValue.json(outcome.preemptions)
        if not outcome.reused:
            metadata.update(
                {
                    "wall_time_s": round(outcome.wall_time_s, 2),
                    "samples_per_s": round(outcome.samples_per_s, 1),
                    "resumed_from": outcome.resumed_from or "",
                }
            )
        context.log.info(f"{entry.name}: {metadata['why']}")
        # The version's fingerprint is its data version: a reused version changes nothing downstream.
        yield Output(outcome.to_json(), metadata=metadata, data_version=DataVersion(outcome.fingerprint))
        threshold = config.threshold if config.threshold is not None else entry.threshold
        passed, check_meta = quality_verdict(entry, outcome.metrics, threshold)
        yield AssetCheckResult(
            check_name=THRESHOLD_CHECK,
            asset_key=model_key(entry.name),
            passed=passed,
            severity=AssetCheckSeverity.WARN,
            metadata=check_meta,
        )

    return _model
