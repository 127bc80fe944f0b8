"""The contract between the Dagster model asset and a model module.

The asset builds a `FitJob` (data already loaded, hyperparameters resolved, folders chosen)
and calls the model module's `fit(job)`, which trains, evaluates on the test split, saves the
final model (and its plots) into `job.out_dir` and returns a `FitResult`; the pipeline writes
the result's metrics and history beside them (`FitResult.write`). Model modules never touch Dagster.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from unified_pipeline.datasets.base import TensorBundle


@dataclass
class FitJob:
    model: str  # registry name, e.g. "vision_service"
    datasets: dict[str, TensorBundle]  # dataset name -> preprocessed tensors
    upstream: dict[str, Path]  # upstream model name -> folder of its saved model (BaseModel.load)
    hparams: dict[str, Any]  # resolved: epochs, batch_size, learning_rate, checkpoint_interval, ...
    device: str  # "cpu", "cuda:0", ...
    checkpoint_dir: Path  # stable per (model, fingerprint): resume looks here
    out_dir: Path  # empty folder for the final artefacts (weights, config, plots)
    seed: int = 0
    log: logging.Logger | Any = field(default_factory=lambda: logging.getLogger("unified_pipeline.train"))
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # per-epoch record for monitors
    control_file: Path | None = None  # live commands (lr, pause, stop) polled at step boundaries
    warm_start: Any = None  # training.warm_start.WarmStart: fine-tune that parent instead of starting over

    def hp(self, key: str, default: Any = None) -> Any:
        return self.hparams.get(key, default)


@dataclass
class FitResult:
    metrics: dict[str, dict[str, float]]  # {"test": {...}, "val": {...}, "baseline": {...}}
    history: list[dict[str, Any]]  # one record per epoch: epoch, train_loss, val_loss, val_<metric>, lr, samples_per_s
    param_count: int
    epochs_run: int
    samples_per_s: float
    wall_time_s: float
    device: str
    resumed_from: str | None = None  # checkpoint file the run resumed from, if any
    plots: dict[str, Path] = field(default_factory=dict)  # title -> PNG inside out_dir
    notes: dict[str, Any] = field(default_factory=dict)  # anything else worth showing (baseline names, ...)

    def write(self, out_dir: Path) -> None:
        """metrics.json and history.json beside the saved model: the pipeline's one writer of them."""
        from unified_pipeline import atomic

        atomic.write_json(Path(out_dir) / "metrics.json", self.metrics)
        atomic.write_json(Path(out_dir) / "history.json", self.history)
