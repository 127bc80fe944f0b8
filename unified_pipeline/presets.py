"""Typed loading of `presets/training_preset.json` (the original preset schema).

Resolution order for a model's hyperparameters, later wins:
the model's SPEC defaults (models/spec.py) < training_configuration < hardware_configuration < scenario
< model_specific_presets[model] < run config overrides. So a per-model preset's `epochs`
beats the scenario's; each model step logs the values it resolved and where each came from.
Keys the original file carried that this pipeline does not use are accepted with a warning.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unified_pipeline.errors import ConfigError
from unified_pipeline.models.registry import MODELS, register_instance, reset_instances
from unified_pipeline.paths import project_root, raw_root, unified_home
from unified_pipeline.registry.aliases import DEFAULT_RULE, RULES
from unified_pipeline.training.trainer_config import ALIASES, OPTIMIZERS

ALL_MODELS = "all_models"
ALL_DATASETS = "all_available_datasets"
# Model names of the original system that this build may not provide (yet); they parse, and
# resolving a scenario that needs one says so instead of failing on an unknown name.
ORIGINAL_MODEL_NAMES = {
    "vision_service", "audio_service", "text_service", "multimodal_service", "environment_simulator",
    "causal_reasoning_engine", "adaptive_learning_controller", "alpha_deep_model",
}


class PresetWarning(UserWarning):
    pass


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class Scenario(_Section):
    description: str = ""
    datasets: list[str] = Field(default_factory=lambda: [ALL_DATASETS])
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    target_models: list[str] = Field(default_factory=lambda: [ALL_MODELS])
    checkpoint_interval: int = Field(5, ge=1)
    learning_rate: float | None = Field(None, gt=0, le=10)
    enable_collaborative_training: bool = False
    use_gpu: bool = True
    distributed_training: bool = False

    @field_validator("target_models")
    @classmethod
    def _known_models(cls, names: list[str]) -> list[str]:
        valid = sorted(ORIGINAL_MODEL_NAMES | set(MODELS))
        bad = [n for n in names if n != ALL_MODELS and n not in valid]
        if bad:
            raise ValueError(f"unknown model(s) {bad}; valid: {[ALL_MODELS] + valid}")
        return names


class TrainingConfiguration(_Section):
    optimizer: str = "adamw"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.01, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    early_stopping: bool = True
    early_stopping_patience: int = Field(8, ge=0)
    keep_last_checkpoints: int = Field(2, ge=1)
    seed: int = 0
    # Registry settings (not part of the fingerprint): when a new version becomes production, and
    # how many versions to keep after each registration (None: prune only by hand).
    promotion_rule: str = DEFAULT_RULE
    keep_versions: int | None = Field(None, ge=1)
    # A model step stopped by SIGTERM (eviction, spot notice) checkpoints and is retried this many
    # times, after preemption_retry_delay_s, doubling each time (training/preemption.py).
    preemption_retries: int = Field(2, ge=0, le=100)
    # production moves only with evidence: GX passed on every data version, the model's asset
    # check passed, the promotion rule holds (registry/evidence.py).
    promotion_gate: bool = True
    preemption_retry_delay_s: float = Field(10.0, ge=0, le=3600)

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        if v.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {v!r}; valid: {list(OPTIMIZERS)}")
        return v.lower()

    @field_validator("promotion_rule")
    @classmethod
    def _promotion_rule(cls, v: str) -> str:
        if v not in RULES:
            raise ValueError(f"unknown promotion rule {v!r}; valid: {list(RULES)}")
        return v


class HardwareConfiguration(_Section):
    use_gpu: bool = True
    mixed_precision: bool = True
    slots_per_gpu: int = Field(4, ge=1, le=64)
    compile: bool = False
    # Kubernetes only: GPUs the cluster may give one run's model steps at once (one pod each).
    cluster_gpus: int = Field(4, ge=1, le=4096)


class ModelInstance(_Section):
    """A model trained like a built-in one on datasets of its own; its name is its asset, registry
    line, check and CLI name. Declaring a built-in name redefines that default instance."""

    architecture: str
    datasets: list[str] = Field(default_factory=list)
    hparams: dict[str, Any] = Field(default_factory=dict)
    upstream: dict[str, str] = Field(default_factory=dict)  # built-in upstream model -> declared model
    description: str = ""


class Preset(_Section):
    preset_name: str
    preset_version: str = "1.0"
    description: str = ""
    data_configuration: dict[str, Any] = Field(default_factory=dict)
    # Validated before the sections that name models, so those may name the instances.
    model_instances: dict[str, ModelInstance] = Field(default_factory=dict)
    training_scenarios: dict[str, Scenario]
    training_configuration: TrainingConfiguration = Field(default_factory=TrainingConfiguration)
    hardware_configuration: HardwareConfiguration = Field(default_factory=HardwareConfiguration)
    model_specific_presets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    data_preprocessing: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("model_instances")
    @classmethod
    def _register_instances(cls, v: dict[str, ModelInstance]) -> dict[str, ModelInstance]:
        reset_instances()
        pending = dict(v)
        while pending:  # an instance may swap in another instance as its upstream: register that first
            ready = [n for n, i in pending.items() if not set(i.upstream.values()) & set(pending)]
            if not ready:
                raise ValueError(f"model instances {sorted(pending)} name each other as upstream in a loop")
            for name in ready:
                inst = pending.pop(name)
                register_instance(name, inst.architecture, inst.datasets, inst.upstream, inst.description)
        return v

    @field_validator("model_specific_presets")
    @classmethod
    def _known_model_keys(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        valid = sorted(ORIGINAL_MODEL_NAMES | set(MODELS))
        bad = [n for n in v if n not in valid]
        if bad:
            raise ValueError(f"unknown model(s) {bad}; valid: {valid}")
        return v

    def scenario(self, name: str) -> Scenario:
        if name not in self.training_scenarios:
            raise ConfigError(f"unknown scenario {name!r}; valid: {sorted(self.training_scenarios)}")
        return self.training_scenarios[name]

    def models_for(self, scenario: str) -> list[str]:
        """Target models of a scenario, expanded, in registry order; unknown-here models raise."""
        wanted = self.scenario(scenario).target_models
        names = list(MODELS) if ALL_MODELS in wanted else list(dict.fromkeys(wanted))
        missing = [n for n in names if n not in MODELS]
        if missing:
            raise ConfigError(
                f"scenario {scenario!r} targets {missing}, which this build does not provide; "
                f"available: {sorted(MODELS)}"
            )
        return names

    def available_models_for(self, scenario: str) -> list[str]:
        wanted = self.scenario(scenario).target_models
        names = list(MODELS) if ALL_MODELS in wanted else wanted
        return [n for n in names if n in MODELS]

    def datasets_for(self, scenario: str, available: list[str]) -> list[str]:
        wanted = self.scenario(scenario).datasets
        if ALL_DATASETS in wanted:
            return list(available)
        bad = [d for d in wanted if d not in available]
        if bad:
            raise ConfigError(f"scenario {scenario!r} names unknown dataset(s) {bad}; valid: {[ALL_DATASETS] + list(available)}")
        return list(wanted)

    def hparams(self, scenario: str, model: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.hparams_with_sources(scenario, model, overrides)[0]

    def hparams_with_sources(self, scenario: str, model: str,
                             overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """The resolved hyperparameters and, per key, the preset section that set it (later wins:
        training_configuration < hardware_configuration < training_scenarios.<scenario>
        < model_specific_presets.<model> < run config)."""
        sc = self.scenario(scenario)
        tc = self.training_configuration
        hw = self.hardware_configuration
        train = "training_configuration"
        hard = "hardware_configuration"
        scen = f"training_scenarios.{scenario}"
        values: list[tuple[str, Any, str]] = [
            ("learning_rate", tc.learning_rate, train),
            ("weight_decay", tc.weight_decay, train),
            ("optimizer", tc.optimizer, train),
            ("warmup_epochs", tc.warmup_epochs, train),
            ("grad_clip", tc.grad_clip, train),
            ("early_stopping_patience", tc.early_stopping_patience if tc.early_stopping else 0, train),
            ("keep_last", tc.keep_last_checkpoints, train),
            ("seed", tc.seed, train),
            ("promotion_rule", tc.promotion_rule, train),
            ("keep_versions", tc.keep_versions, train),
            ("promotion_gate", tc.promotion_gate, train),
            ("precision", "auto" if hw.mixed_precision else "fp32", hard),
            ("compile", hw.compile, hard),
            ("use_gpu", sc.use_gpu and hw.use_gpu, f"{scen} and {hard}"),
            ("epochs", sc.epochs, scen),
            ("batch_size", sc.batch_size, scen),
            ("checkpoint_interval", sc.checkpoint_interval, scen),
            # Collaborative scenarios let models take the adaptive_learning_controller's strategy.
            ("adaptive_strategy", sc.enable_collaborative_training, scen),
        ]
        if sc.learning_rate is not None:
            values.append(("learning_rate", sc.learning_rate, scen))
        entry = MODELS.get(model)
        own: list[tuple[str, Any, str]] = []
        if entry is not None and entry.base != model:  # an instance starts from its architecture's preset
            own += [(k, v, f"model_specific_presets.{entry.base}")
                    for k, v in self.model_specific_presets.get(entry.base, {}).items() if k != "datasets"]
        if model in self.model_instances:
            own += [(k, v, f"model_instances.{model}.hparams") for k, v in self.model_instances[model].hparams.items()]
        own += [(k, v, f"model_specific_presets.{model}") for k, v in self.model_specific_presets.get(model, {}).items()]
        own += [(k, v, "run config") for k, v in (overrides or {}).items()]
        values += [(ALIASES.get(k, k), v, source) for k, v, source in own]  # one spelling from here on
        out: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key, value, source in values:
            out[key], sources[key] = value, source
        return out, sources

    def preprocess(self, kind: str) -> dict[str, Any]:
        out = dict(self.data_preprocessing.get(kind, {}))
        split = self.data_configuration.get("split")
        if split:
            out.setdefault("fractions", split)
        if "seed" in self.data_configuration:
            out.setdefault("seed", self.data_configuration["seed"])
        return out


def _unused_keys(model: BaseModel, where: str = "") -> list[str]:
    found = []
    for key in (model.model_extra or {}):
        found.append(f"{where}{key}")
    for name, value in model:
        if isinstance(value, BaseModel):
            found += _unused_keys(value, f"{where}{name}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, BaseModel):
                    found += _unused_keys(v, f"{where}{name}.{k}.")
    return found


def check_model_settings(preset: Preset, models: list[str], path: str | Path) -> None:
    """Refuse a model-specific key that no part of the model reads (its settings dataclass, the
    trainer, the pipeline's switches), naming the file, the section, the closest valid name and all
    of them. Imports the models' modules (torch), so callers run it once before training starts."""
    for name in models:
        entry = MODELS.get(name)
        if entry is None:
            continue
        spec = entry.spec()
        for section in dict.fromkeys([entry.base, name]):  # an instance reads its architecture's section too
            keys = set(preset.model_specific_presets.get(section, {})) - {"datasets"}
            spec.check_keys(keys, f"{path}: model_specific_presets.{section}:")
        if name in preset.model_instances:
            spec.check_keys(preset.model_instances[name].hparams, f"{path}: model_instances.{name}.hparams:")


def default_preset_path() -> Path:
    env = os.environ.get("UNIFIED_PRESET")
    return Path(env) if env else project_root() / "presets" / "training_preset.json"


def load_preset(path: str | Path | None = None) -> Preset:
    """Parse and check a preset; its `model_instances` become models of the registry (MODELS)."""
    path = Path(path) if path else default_preset_path()
    reset_instances()  # a preset without the section gets the built-in models only
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: preset file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except OSError as exc:  # a folder, no permission, ...
        raise ConfigError(f"{path}: cannot read preset file ({exc.strerror or exc})") from exc
    try:
        preset = Preset.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {loc}: {first['msg']} (got {first.get('input')!r})") from exc
    unused = _unused_keys(preset)
    if unused:
        warnings.warn(f"{path}: keys not used by this pipeline: {', '.join(unused)}", PresetWarning, stacklevel=2)
    for problem in root_mismatches(preset):
        warnings.warn(f"{path}: {problem}", PresetWarning, stacklevel=2)
    return preset


# data_configuration keys that name folders, and the variable that really decides each one. The
# folders are fixed before any preset is read (the list of datasets decides the assets), so the
# preset can only be checked against them, not move them.
ROOT_SETTINGS = {"data_root": ("UNIFIED_DATA", raw_root, "data/raw"),
                 "output_root": ("UNIFIED_HOME", unified_home, ".unified")}


def root_mismatches(preset: Preset) -> list[str]:
    """A data_root / output_root edited away from the default that is not the folder in use,
    with how to use that folder."""
    out = []
    for key, (env, actual, default) in ROOT_SETTINGS.items():
        wanted = preset.data_configuration.get(key)
        if not wanted:
            continue
        where = Path(str(wanted)).expanduser()
        where = (where if where.is_absolute() else project_root() / where).resolve()
        if where != (project_root() / default).resolve() and where != actual():
            out.append(f"data_configuration.{key} {str(wanted)!r} is ignored: this run uses {actual()} "
                       f"(set {env}={where} to use that folder)")
    return out
