"""The one training loop every model uses.

AdamW with per-step linear warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA,
optional torch.compile (off for a model that declares `compile_off_reason`), best weights
restored at the end. What a run carries between steps is one `FitState` (fit_state.py); early
stopping, live control commands and the per-epoch monitor are callbacks (callbacks.py).

On an accelerator the step loop never waits for the device: the splits and each epoch's
permutation go over once, batches are cut on the device, and the loss is read back once per
epoch. Inputs a model reads on the host (`host_fields`, e.g. audio lengths) stay on the host.
A split bigger than `loader_threshold_bytes` streams through a DataLoader instead, in the same
batch order; fields kept on disk (MappedRows over tensor shards) are read by worker processes.
Crash-proof: checkpoints (checkpoints.py) hold everything the loop needs, including RNG and
shuffle-generator state, so a resumed run on CPU ends with bit-identical weights. SIGINT/SIGTERM
write a checkpoint at the next step boundary and then raise `TrainingInterrupted`.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from unified_pipeline.datasets.shards import MappedRows
from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.training import checkpoints as ckpt
from unified_pipeline.training.callbacks import Callback, default_callbacks
from unified_pipeline.training.control import ControlPoller
from unified_pipeline.training.fit_settings import autocast, fit_process_settings, resolve_precision
from unified_pipeline.training.fit_state import FitState
from unified_pipeline.training.interrupts import TrainingInterrupted, signals_deferred
from unified_pipeline.training.streaming import place_batch, stream_batches
from unified_pipeline.training.trainer_config import TrainerConfig

__all__ = ["Trainer", "TrainerConfig", "TrainSummary", "TrainingInterrupted", "check_split"]

# Test hook: seconds to sleep after each step, so a test can signal a real job mid-epoch.
STEP_DELAY_ENV = "UNIFIED_STEP_DELAY_S"
STEP_DELAY_S = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)


@dataclass
class TrainSummary:
    history: list[dict]
    best_epoch: int
    best_metric: float
    epochs_run: int
    samples_per_s: float
    wall_time_s: float
    resumed_from: str | None
    stopped_early: bool
    device: str
    notes: list[dict] = field(default_factory=list)  # applied control commands, stop reasons


def _nbytes(tensors: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class _TrainSplit:
    """The training split as the epoch loop cuts it into batches."""

    tensors: tuple[torch.Tensor, ...]
    n: int
    batch_size: int
    streamed: bool  # through a DataLoader, not indexed in memory
    on_host: list[bool]


class Trainer:
    def __init__(self, model: torch.nn.Module, cfg: TrainerConfig, *, loss_fn: Callable, metric_fn: Callable,
                 checkpoint_dir: Path | None, log: Any = None, on_epoch: Callable | None = None,
                 control_file: Path | None = None, optimizer_factory: Callable | None = None,
                 host_fields: tuple[int, ...] = (), callbacks: Sequence[Callback] | None = None):
        """`host_fields`: positions in the split tuples that stay on the host, batched with host
        indices; by default the model's own `host_fields` (positions of forward()'s arguments).
        `callbacks`: used instead of the default set (callbacks.default_callbacks), which
        `on_epoch` and `control_file` configure; so they cannot be given together."""
        cfg.validate()
        if callbacks is not None and (on_epoch is not None or control_file is not None):
            raise ConfigError("Trainer: give on_epoch and control_file through callbacks= "
                              "(EpochMonitor, LiveControl in training/callbacks.py), not next to it")
        self.model, self.cfg = model, cfg
        self.loss_fn, self.metric_fn = loss_fn, metric_fn
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.log = log or logging.getLogger("unified_pipeline.train")
        self.on_epoch = on_epoch
        # A ControlPoller given instead of a path (a replay's recorded commands) is used as is.
        self.control = control_file if isinstance(control_file, ControlPoller) else ControlPoller(control_file)
        self.callbacks = list(callbacks) if callbacks is not None else None
        self.optimizer_factory = optimizer_factory
        self.device = torch.device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model.to(self.device)
        self.host_fields = frozenset(host_fields or getattr(model, "host_fields", ()))
        off = getattr(model, "compile_off_reason", None)
        if cfg.compile and off:
            self.log.info(f"torch.compile left off for {type(model).__name__}: {off}")
        self.net = torch.compile(model) if cfg.compile and not off else model
        self._placed: dict[tuple[int, ...], tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = {}

    # -- pieces -------------------------------------------------------------------------------

    def autocast(self):
        return autocast(self.device, self.precision)

    def on_device(self, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """`data` on the training device (host fields stay), copied once per split and trainer."""
        key = tuple(id(t) for t in data)
        found = self._placed.get(key)
        if found is None:
            moved = tuple(t if i in self.host_fields else t.to(self.device) for i, t in enumerate(data))
            found = self._placed[key] = (data, moved)  # the originals stay referenced: ids stay theirs
        return found[1]

    def evaluate(self, data: tuple[torch.Tensor, ...]) -> dict[str, float]:
        """metric_fn on a whole split in eval mode, without gradients, under the training precision
        (a metric_fn that must not depend on it, like retrieval recall, turns autocast off itself)."""
        if _nbytes(data) <= self.cfg.loader_threshold_bytes:
            data = self.on_device(data)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.autocast():
                out = self.metric_fn(self.net, data)
        finally:
            self.model.train(was_training)
        return {k: float(v) for k, v in out.items()}

    def active_callbacks(self) -> list[Callback]:
        """The callbacks a fit runs with; the default set reads `on_epoch` when fit starts."""
        if self.callbacks is not None:
            return self.callbacks
        return default_callbacks(self.control, self.cfg.early_stopping_patience, self.cfg.metric, self.log,
                                 self.on_epoch)

    def _save(self, state: FitState, is_best: bool = False) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        loop = state.loop
        contents = state.checkpoint(self.model, self.cfg, include_best=not is_best)
        path = ckpt.save_checkpoint(self.checkpoint_dir, loop.epoch, loop.step, contents)
        ckpt.prune(self.checkpoint_dir, self.cfg.keep_last, (loop.epoch, loop.step), loop.best_epoch or None)
        return path

    def _start(self, steps: int, started: float) -> FitState:
        """A fresh state, or the latest valid checkpoint's when it fits the model."""
        state = FitState.start(self.model, self.cfg, self.precision, self.device, steps, started,
                               self.optimizer_factory)
        point = ckpt.latest_valid(self.checkpoint_dir, self.log) if self.checkpoint_dir is not None else None
        if point is None:
            return state
        try:
            state.restore(point, self.model)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            self.log.warning(f"checkpoint {point.path} does not fit this model ({exc}); starting fresh")
            self.model.load_state_dict(state.best_weights)  # still the starting weights: restore sets it last
            return FitState.start(self.model, self.cfg, self.precision, self.device, steps, started,
                                  self.optimizer_factory)
        self.log.info(f"resuming from {point.path} (epoch {state.loop.epoch}, step {state.loop.step})")
        return state

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, train: tuple[torch.Tensor, ...], val: tuple[torch.Tensor, ...]) -> TrainSummary:
        cfg, started = self.cfg, time.perf_counter()
        n = check_split("train", train)
        check_split("val", val)
        streamed = _nbytes(train) > cfg.loader_threshold_bytes
        if not streamed:
            train = self.on_device(train)
        bs = min(cfg.batch_size, n)
        split = _TrainSplit(train, n, bs, streamed, [t.device.type == "cpu" for t in train])
        # A lone trailing sample would break BatchNorm; it is left out of that epoch instead.
        state = self._start(n // bs + (1 if n % bs >= 2 else 0), started)
        callbacks = self.active_callbacks()
        for cb in callbacks:
            cb.on_fit_start(state)
        with fit_process_settings(self.device), signals_deferred(state):
            while state.loop.epoch < cfg.epochs and not state.loop.finished:
                lr_used, step_reason = self._train_epoch(state, split, callbacks)
                self._end_epoch(state, val, lr_used, step_reason, callbacks)
                if state.signal is not None:
                    raise TrainingInterrupted(state.signal, state.last_saved)
        self.model.load_state_dict(state.best_weights)
        loop = state.loop
        return TrainSummary(
            history=loop.history, best_epoch=loop.best_epoch,
            best_metric=loop.best_metric if loop.best_metric is not None else float("nan"),
            epochs_run=loop.epoch, samples_per_s=loop.samples_total / max(loop.train_time_total, 1e-9),
            wall_time_s=time.perf_counter() - started, resumed_from=state.resumed_from,
            stopped_early=loop.stopped_early, device=str(self.device), notes=loop.notes,
        )

    def _batches(self, state: FitState, split: _TrainSplit) -> Iterator[tuple[torch.Tensor, ...]]:
        """The rest of the current epoch's batches, in the epoch's shuffled order."""
        loop, gen, bs, steps = state.loop, state.generator, split.batch_size, state.steps
        if loop.step == 0:
            loop.shuffle_state = ckpt.rng_state_to_text(gen.get_state())
        else:  # mid-epoch resume: replay this epoch's permutation
            gen.set_state(ckpt.rng_state_from_text(loop.shuffle_state))
        perm = torch.randperm(split.n, generator=gen)  # on the host: the same order on every device
        if split.streamed:
            batches = [perm[i * bs:(i + 1) * bs] for i in range(loop.step, steps)]
            return stream_batches(split.tensors, batches, self.cfg.loader_workers, self.device)
        perm_dev = perm.to(self.device) if not all(split.on_host) else perm
        return (tuple(t[perm[i * bs:(i + 1) * bs]] if host else t[perm_dev[i * bs:(i + 1) * bs]]
                      for t, host in zip(split.tensors, split.on_host))
                for i in range(loop.step, steps))

    def _train_epoch(self, state: FitState, split: _TrainSplit, callbacks: list[Callback]) -> tuple[float, str | None]:
        """Steps to the end of the epoch (or a callback's stop); returns (lr of the last step, stop reason)."""
        cfg, loop, opt, sched, scaler = self.cfg, state.loop, state.optimizer, state.scheduler, state.scaler
        params = [p for p in self.model.parameters() if p.requires_grad]
        source = self._batches(state, split)
        self.model.train()
        t0, loss_sum, reason, lr_used = time.perf_counter(), None, None, opt.param_groups[0]["lr"]
        for batch in source:
            if split.streamed:
                batch = place_batch(batch, split.tensors, self.host_fields, self.device)
            lr_used = opt.param_groups[0]["lr"]
            with self.autocast():
                loss = self.loss_fn(self.net, batch)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            d = loss.detach().float() * len(batch[0])
            loss_sum = d if loss_sum is None else loss_sum + d
            loop.step += 1
            loop.epoch_samples += len(batch[0])
            reasons = [cb.on_step_end(state) for cb in callbacks]
            reason = next((r for r in reasons if r), None)
            if STEP_DELAY_S:
                time.sleep(STEP_DELAY_S)
            if state.signal is not None and loop.step < state.steps:
                loop.loss_sum += float(loss_sum)
                loop.epoch_time += time.perf_counter() - t0
                raise TrainingInterrupted(state.signal, self._save(state))
            if reason:
                break
        loop.loss_sum += float(loss_sum) if loss_sum is not None else 0.0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        loop.epoch_time += time.perf_counter() - t0
        return lr_used, reason

    def _end_epoch(self, state: FitState, val, lr_used: float, step_reason: str | None,
                   callbacks: list[Callback]) -> None:
        cfg, loop = self.cfg, state.loop
        train_loss = loop.loss_sum / max(loop.epoch_samples, 1)
        sps = loop.epoch_samples / max(loop.epoch_time, 1e-9)
        loop.samples_total += loop.epoch_samples
        loop.train_time_total += loop.epoch_time
        epoch_time = loop.epoch_time
        loop.epoch += 1
        loop.step, loop.loss_sum, loop.epoch_samples, loop.epoch_time = 0, 0.0, 0, 0.0
        metrics = self.evaluate(val)
        if cfg.metric not in metrics or "loss" not in metrics:
            raise ConfigError(f"metric_fn must return {cfg.metric!r} and 'loss'; got {sorted(metrics)}")
        value = metrics[cfg.metric]
        record = {"epoch": loop.epoch, "train_loss": train_loss, "val_loss": metrics["loss"],
                  **{f"val_{k}": v for k, v in metrics.items() if k != "loss"},
                  "lr": lr_used, "samples_per_s": sps, "time_s": epoch_time}
        is_best = state.track_best(value, self.model, cfg.higher_is_better)
        reasons = [cb.on_validation_end(state, record) for cb in callbacks]
        reason = step_reason or next((r for r in reasons if r), None)
        if reason:
            loop.finished = loop.stopped_early = True
            loop.notes.append({"epoch": loop.epoch, "stopped": reason})
        loop.history.append(record)
        due = cfg.checkpoint_interval and loop.epoch % cfg.checkpoint_interval == 0
        state.last_saved = None
        if due or is_best or loop.finished or loop.epoch == cfg.epochs or state.signal is not None:
            state.last_saved = self._save(state, is_best=is_best)
        done = loop.epoch - state.run_start_epoch
        eta = (time.perf_counter() - state.started) / max(done, 1) * (cfg.epochs - loop.epoch)
        self.log.info(
            f"epoch {loop.epoch}/{cfg.epochs} train_loss {train_loss:.4f} val_loss {metrics['loss']:.4f} "
            f"val_{cfg.metric} {value:.4f} lr {lr_used:.2e} {sps:.0f} samples/s eta {eta:.0f}s"
            + (f" (stopping: {reason})" if reason else "")
        )
        for cb in callbacks:
            cb.on_epoch_end(state, dict(record))


def check_split(name: str, tensors: tuple[torch.Tensor, ...]) -> int:
    if not tensors or not all(isinstance(t, (torch.Tensor, MappedRows)) for t in tensors):
        raise DatasetError(f"{name} split: expected a non-empty tuple of tensors")
    n = len(tensors[0])
    if n == 0 or any(len(t) != n for t in tensors):
        raise DatasetError(f"{name} split: tensors must share a non-zero first dimension, got {[tuple(t.shape) for t in tensors]}")
    return n
