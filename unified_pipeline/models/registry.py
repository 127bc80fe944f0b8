"""Every trainable model, one line each.

The entry holds only what the Dagster graph needs at import time (cheap: no torch import);
the model's module is imported inside the training step. Adding a model: one new file in
`models/` exposing `fit(job) -> FitResult` (see training/job.py) and one line here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    module: str  # module exposing fit(job) -> FitResult and predict helpers
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
        ModelEntry("environment_simulator", "unified_pipeline.models.environment_simulator", ("transitions",),
                   "Probabilistic MLP ensemble world model (worst-case one-step MSE / copy-last-state MSE)",
                   "mse_ratio_vs_copy", 0.1, higher_is_better=False, all_datasets=True, group="concept_models"),
        ModelEntry("causal_reasoning_engine", "unified_pipeline.models.causal_reasoning", ("causal",),
                   "NOTEARS structural causal model (worst SHD vs the true graph among linear-SEM datasets)",
                   "shd_linear", 3.0, higher_is_better=False, all_datasets=True, group="concept_models"),
        ModelEntry("alpha_deep_model", "unified_pipeline.models.alpha_deep_model", ("memory",),
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
