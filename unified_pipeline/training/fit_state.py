"""Everything one `Trainer.fit` carries from step to step, in one object.

`FitState` holds the optimiser, learning-rate schedule, gradient scaler, shuffle generator, the
best weights so far and the loop counters (`LoopProgress`). A checkpoint is `FitState.checkpoint`
and a resume is `FitState.restore`; the checkpoint keys (`model, best, optim, sched, scaler, rng,
loop, config`) and the field names of `loop` are a stored format: older checkpoints must resume.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from unified_pipeline.training import checkpoints as ckpt
from unified_pipeline.training.fit_settings import lr_factor, make_optimizer, seed_everything
from unified_pipeline.training.trainer_config import TrainerConfig


@dataclass
class LoopProgress:
    """The checkpoint's `loop` entry: its field names are read back from stored checkpoints."""

    epoch: int = 0  # completed epochs
    step: int = 0  # steps done in the current epoch
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False
    history: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    loss_sum: float = 0.0  # current epoch, for a mid-epoch checkpoint
    epoch_samples: int = 0
    epoch_time: float = 0.0
    samples_total: int = 0
    train_time_total: float = 0.0
    shuffle_state: str | None = None  # generator state at the start of the current epoch


def cpu_copy(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in weights.items()}


@dataclass
class FitState:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None  # fp16 only
    generator: torch.Generator  # the shuffle order; saved with the checkpoint
    best_weights: dict[str, torch.Tensor]  # on the host
    steps: int  # optimiser steps per epoch
    started: float  # perf_counter() when fit began, for the ETA
    loop: LoopProgress = field(default_factory=LoopProgress)
    run_start_epoch: int = 0  # completed epochs when this run began (after a resume)
    resumed_from: str | None = None
    signal: int | None = None  # SIGINT/SIGTERM received; acted on at the next step boundary
    last_saved: Path | None = None  # the checkpoint written at the end of the latest epoch, if any

    @classmethod
    def start(cls, model: torch.nn.Module, cfg: TrainerConfig, precision: str, device: torch.device, steps: int,
              started: float, optimizer_factory: Callable | None = None) -> "FitState":
        """Seeded from `cfg.seed`: the same settings give the same run."""
        seed_everything(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg, optimizer_factory)
        warmup, total = round(cfg.warmup_epochs * steps), cfg.epochs * steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, warmup, total, cfg.min_lr_ratio))
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        return cls(optimizer, scheduler, scaler, generator, cpu_copy(model.state_dict()), steps, started)

    def track_best(self, value: float, model: torch.nn.Module, higher_is_better: bool) -> bool:
        """Count the epoch just finished as best (keeping its weights) or as one more bad epoch."""
        loop = self.loop
        best = loop.best_metric
        is_best = math.isfinite(value) and (
            best is None or (value > best if higher_is_better else value < best))
        if is_best:
            loop.best_metric, loop.best_epoch, loop.bad_epochs = value, loop.epoch, 0
            self.best_weights = cpu_copy(model.state_dict())
        else:
            loop.bad_epochs += 1
        return is_best

    def checkpoint(self, model: torch.nn.Module, cfg: TrainerConfig, include_best: bool) -> dict[str, Any]:
        """What a checkpoint holds; `include_best` False when the model's weights are the best ones."""
        return {
            "model": model.state_dict(),
            "best": self.best_weights if include_best else None,
            "optim": self.optimizer.state_dict(),
            "sched": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": ckpt.capture_rng(self.generator),
            "loop": dataclasses.asdict(self.loop),
            "config": dataclasses.asdict(cfg),
        }

    def restore(self, point: ckpt.Checkpoint, model: torch.nn.Module) -> None:
        """Load `point` into the model and this state; raises when it does not fit the model."""
        st = point.state
        model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optim"])
        self.scheduler.load_state_dict(st["sched"])
        if self.scaler is not None and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        loop = LoopProgress(**st["loop"])
        best = st.get("best")
        best_weights = cpu_copy(best if best else st["model"])
        ckpt.restore_rng(st["rng"], self.generator)
        self.loop, self.best_weights = loop, best_weights
        self.run_start_epoch, self.resumed_from = loop.epoch, str(point.path)
