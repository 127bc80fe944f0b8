"""Every trainable model, one line each.

The entry holds only what the Dagster graph needs at import time (cheap: no torch import);
the model's module, imported inside the training step, ends with `SPEC = ModelSpec(...)`
(models/spec.py: settings dataclass, fit, predict, build, warm start). Adding a model: one new
module with its SPEC and one line here.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from unified_pipeline.errors import ConfigError

if TYPE_CHECKING:
    from unified_pipeline.models.spec import ModelSpec


@dataclass(frozen=True)
class ModelEntry:
    name: str
    module: str  # module whose SPEC (models/spec.py) trains, predicts and lists the settings
    dataset_kinds: tuple[str, ...]  # kinds of dataset lane it reads (one dataset per kind unless all_datasets)
    description: str
    metric: str  # headline test metric in FitResult.metrics["test"]
    threshold: float  # asset check passes when the test metric reaches this
    higher_is_better: bool = True
    upstream_models: tuple[str, ...] = ()
    all_datasets: bool = False  # True: one lane per dataset of the kind; False: one dataset
    default_datasets: tuple[str, ...] = ()  # preferred dataset names when several of a kind exist
    group: str = "models"
    # Models whose registered output tunes this model's hyperparameters when one exists (an
    # ordering edge in the graph, never required: the model trains on its preset without it).
    advisors: tuple[str, ...] = ()
    architecture: str = ""  # for an instance declared in a preset: the built-in model it is a copy of
    only_named_datasets: bool = False  # an instance trains on its named datasets or not at all
    # Upstream swaps of an instance (new -> built-in): the built-in one stands in when the new one
    # has no data here, so a preset written for one data set still builds on another.
    upstream_fallbacks: tuple[tuple[str, str], ...] = ()

    @property
    def base(self) -> str:
        return self.architecture or self.name

    def spec(self) -> "ModelSpec":
        """The model module's SPEC (imports the module: torch and all)."""
        spec = getattr(importlib.import_module(self.module), "SPEC", None)
        if spec is None:
            raise ConfigError(f"model {self.name!r}: module {self.module} defines no SPEC (models/spec.py)")
        return spec


CONTROLLER = "adaptive_learning_controller"

MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("vision_service", "unified_pipeline.models.vision_cnn", ("vision",),
                   "CNN image classifier", "accuracy", 0.98, default_datasets=("digits",),
                   group="vision_models", advisors=(CONTROLLER,)),
        ModelEntry("audio_service", "unified_pipeline.models.audio_rnn", ("audio",),
                   "Recurrent (GRU) classifier over log-mel frames", "accuracy", 0.97, default_datasets=("spoken_digits",),
                   group="audio_models", advisors=(CONTROLLER,)),
        ModelEntry("text_service", "unified_pipeline.models.text_transformer", ("text",),
                   "Transformer encoder text classifier", "accuracy", 0.70, default_datasets=("langid",),
                   group="text_models", advisors=(CONTROLLER,)),
        ModelEntry("multimodal_service", "unified_pipeline.models.multimodal_fusion", ("vision", "audio", "text"),
                   "Fusion head over the trained vision, audio and text encoders (same number in image, "
                   "speech and word?)", "accuracy", 0.85,
                   upstream_models=("vision_service", "audio_service", "text_service"),
                   default_datasets=("digits", "spoken_digits", "number_words"), group="concept_models"),
        ModelEntry("environment_simulator", "unified_pipeline.models.simulator_queries", ("transitions",),
                   "Probabilistic MLP ensemble world model (worst-case one-step MSE / copy-last-state MSE)",
                   "mse_ratio_vs_copy", 0.1, higher_is_better=False, all_datasets=True, group="concept_models"),
        ModelEntry("causal_reasoning_engine", "unified_pipeline.models.causal_queries", ("causal",),
                   "NOTEARS structural causal model (worst SHD vs the true graph among linear-SEM datasets)",
                   "shd_linear", 3.0, higher_is_better=False, all_datasets=True, group="concept_models"),
        ModelEntry("alpha_deep_model", "unified_pipeline.models.memory_queries", ("memory",),
                   "Denoising memory autoencoder: 32-byte int8 codes, retrieval recall@1",
                   "recall_at_1", 0.8, default_datasets=("memory_records",), group="concept_models"),
        ModelEntry("audio_student", "unified_pipeline.models.audio_student", ("audio",),
                   "Tiny conv audio classifier distilled from audio_service (soft targets at temperature T)",
                   "accuracy", 0.93, upstream_models=("audio_service",), default_datasets=("spoken_digits",),
                   group="audio_models"),
        ModelEntry("adaptive_learning_controller", "unified_pipeline.models.adaptive_learning_controller",
                   ("vision", "audio", "text"),
                   "Optuna study per service model over lr multiplier, batch size and patience, warm-started "
                   "from registered training histories (fraction of models beating the preset on val)",
                   "wins_fraction", 0.5, default_datasets=("digits", "spoken_digits", "langid"),
                   group="concept_models"),
    ]
}

BUILT_IN = dict(MODELS)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def register_instance(name: str, architecture: str, datasets: list[str] | tuple[str, ...] = (),
                      upstream: dict[str, str] | None = None, description: str = "") -> ModelEntry:
    """Add (or, for a built-in name, redefine) a model trained like `architecture` on its own datasets.

    `upstream` swaps an upstream model for another of the same architecture, e.g. a multimodal
    model whose text side is an instance trained on the texts it will see. Raises ValueError.
    """
    if not _NAME.match(name):
        raise ValueError(f"model instance name {name!r} must start with a letter and use only letters, digits and _")
    if architecture not in BUILT_IN:
        raise ValueError(f"model instance {name!r}: unknown architecture {architecture!r}; valid: {sorted(BUILT_IN)}")
    if name in BUILT_IN and name != architecture:
        raise ValueError(f"model instance {name!r} would replace the built-in model of that name; choose another name")
    base = BUILT_IN[architecture]
    swaps = dict(upstream or {})
    unknown = sorted(set(swaps) - set(base.upstream_models))
    if unknown:
        raise ValueError(f"model instance {name!r}: {unknown} are not upstream models of {architecture}; "
                         f"valid: {list(base.upstream_models)}")
    for old, new in swaps.items():
        if new not in MODELS or MODELS[new].base != BUILT_IN[old].base:
            raise ValueError(f"model instance {name!r}: upstream {old} -> {new!r} needs a declared model of "
                             f"architecture {BUILT_IN[old].base}")
    if datasets and len(datasets) != len(base.dataset_kinds) and not base.all_datasets:
        raise ValueError(f"model instance {name!r}: {architecture} reads one dataset of each kind "
                         f"{list(base.dataset_kinds)}, got {list(datasets)}")
    entry = replace(
        base, name=name, architecture=architecture if name != architecture else "",
        default_datasets=tuple(datasets) or base.default_datasets,
        only_named_datasets=bool(datasets) and not base.all_datasets,
        upstream_models=tuple(swaps.get(u, u) for u in base.upstream_models),
        upstream_fallbacks=tuple((new, old) for old, new in swaps.items()),
        advisors=base.advisors if name == architecture else (),
        description=description or base.description,
    )
    MODELS[name] = entry
    _upstream_first()
    return entry


def _upstream_first() -> None:
    """Keep registry order with every upstream model before the models that read it."""
    ordered: dict[str, ModelEntry] = {}

    def visit(name: str) -> None:
        if name not in ordered and name in MODELS:
            for up in MODELS[name].upstream_models:
                visit(up)
            ordered[name] = MODELS[name]

    for name in list(MODELS):
        visit(name)
    MODELS.clear()
    MODELS.update(ordered)


def reset_instances() -> None:
    """Back to the built-in models only (loading another preset starts from here)."""
    MODELS.clear()
    MODELS.update(BUILT_IN)


def declared_models() -> dict[str, ModelEntry]:
    """MODELS with the current preset's instances registered (for callers that did not load it)."""
    from unified_pipeline.presets import load_preset

    if MODELS.keys() == BUILT_IN.keys():
        try:
            load_preset()
        except ConfigError:
            pass  # a broken preset is reported by the commands that read it; built-in models still work
    return MODELS
