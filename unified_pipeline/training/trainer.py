"""The one training loop every model uses.

AdamW with per-step linear warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA,
optional torch.compile (off for a model that declares `compile_off_reason`), early stopping on a
validation metric, best weights restored at the end.

On an accelerator the step loop never waits for the device: the splits and each epoch's
permutation go over once, batches are cut on the device, and the loss is read back once per
epoch. Inputs a model reads on the host (`host_fields`, e.g. audio lengths) stay on the host.
Crash-proof: checkpoints (checkpoints.py) hold everything the loop needs, including RNG and
shuffle-generator state, so a resumed run on CPU ends with bit-identical weights. SIGINT/SIGTERM
write a checkpoint at the next step boundary and then raise `TrainingInterrupted`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from unified_pipeline.errors import ConfigError, DatasetError, PipelineError
from unified_pipeline.training import checkpoints as ckpt
from unified_pipeline.training.control import ControlPoller
from unified_pipeline.training.fit_settings import (autocast, fit_process_settings, lr_factor, make_optimizer,
                                                     resolve_precision, seed_everything)
from unified_pipeline.training.trainer_config import TrainerConfig

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


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived during fit; a checkpoint was written first (if a folder was set)."""

    def __init__(self, signum: int, checkpoint: Path | None):
        super().__init__(f"training interrupted by signal {signum}; checkpoint: {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint


def _nbytes(tensors: tuple[torch.Tensor, ...]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class _Loop:
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


class Trainer:
    def __init__(self, model: torch.nn.Module, cfg: TrainerConfig, *, loss_fn: Callable, metric_fn: Callable,
                 checkpoint_dir: Path | None, log: Any = None, on_epoch: Callable | None = None,
                 control_file: Path | None = None, optimizer_factory: Callable | None = None,
                 host_fields: tuple[int, ...] = ()):
        """`host_fields`: positions in the split tuples that stay on the host, batched with host
        indices; by default the model's own `host_fields` (positions of forward()'s arguments)."""
        cfg.validate()
        self.model, self.cfg = model, cfg
        self.loss_fn, self.metric_fn = loss_fn, metric_fn
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.log = log or logging.getLogger("unified_pipeline.train")
        self.on_epoch = on_epoch
        # A ControlPoller given instead of a path (a replay's recorded commands) is used as is.
        self.control = control_file if isinstance(control_file, ControlPoller) else ControlPoller(control_file)
        self.optimizer_factory = optimizer_factory
        self.device = torch.device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model.to(self.device)
        self.host_fields = frozenset(host_fields or getattr(model, "host_fields", ()))
        off = getattr(model, "compile_off_reason", None)
        if cfg.compile and off:
            self.log.info(f"torch.compile left off for {type(model).__name__}: {off}")
        self.net = torch.compile(model) if cfg.compile and not off else model
        self._signal: int | None = None
        self._placed: dict[tuple[int, ...], tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = {}

    # -- pieces -------------------------------------------------------------------------------

    def autocast(self):
        return autocast(self.device, self.precision)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer([p for p in self.model.parameters() if p.requires_grad], self.cfg, self.optimizer_factory)

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

    def _better(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.cfg.higher_is_better else value < best

    def _state(self, loop: _Loop, gen: torch.Generator, opt, sched, scaler, include_best: bool) -> dict:
        return {
            "model": self.model.state_dict(),
            "best": self._best_state if include_best else None,
            "optim": opt.state_dict(),
            "sched": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": ckpt.capture_rng(gen),
            "loop": dataclasses.asdict(loop),
            "config": dataclasses.asdict(self.cfg),
        }

    def _save(self, loop: _Loop, gen, opt, sched, scaler, is_best: bool = False) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        state = self._state(loop, gen, opt, sched, scaler, include_best=not is_best)
        path = ckpt.save_checkpoint(self.checkpoint_dir, loop.epoch, loop.step, state)
        ckpt.prune(self.checkpoint_dir, self.cfg.keep_last, (loop.epoch, loop.step), loop.best_epoch or None)
        return path

    def _restore(self, point: ckpt.Checkpoint, gen, opt, sched, scaler) -> _Loop:
        st = point.state
        self.model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        sched.load_state_dict(st["sched"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        loop = _Loop(**st["loop"])
        best = st.get("best")
        src = best if best else st["model"]
        self._best_state = {k: v.detach().cpu().clone() for k, v in src.items()}
        ckpt.restore_rng(st["rng"], gen)
        return loop

    # -- signals and live control -------------------------------------------------------------

    def _on_signal(self, signum, _frame):
        if self._signal is not None:  # second signal: give up waiting (or saving); older checkpoints stay valid
            raise TrainingInterrupted(signum, None)
        self._signal = signum

    @contextlib.contextmanager
    def _signals_deferred(self) -> Iterator[None]:
        self._signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in old:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _apply(self, cmd: dict, loop: _Loop, opt, sched, record_cmds: list) -> None:
        if "lr" in cmd:
            factor = cmd["lr"] / opt.param_groups[0]["lr"]
            for g in opt.param_groups:
                g["lr"] *= factor
            sched.base_lrs = [b * factor for b in sched.base_lrs]  # the schedule continues from the new level
        loop.notes.append({"epoch": loop.epoch + 1, "step": loop.step, "command": cmd, "time": time.time()})
        record_cmds.append(cmd)
        self.log.info(f"control: applied {cmd} at epoch {loop.epoch + 1} step {loop.step}")

    def _next_command(self) -> dict | None:
        try:
            return self.control.poll()
        except PipelineError as exc:
            self.log.warning(f"ignoring control command: {exc}")
            return None

    def _poll_control(self, loop: _Loop, opt, sched, record_cmds: list) -> bool:
        """Apply pending commands (waiting while paused); True when a stop was requested."""
        self.control.position = (loop.epoch + 1, loop.step)  # where a command would apply, as recorded in notes
        cmd = self._next_command()
        if cmd is None:
            return False
        self._apply(cmd, loop, opt, sched, record_cmds)
        paused = bool(cmd.get("pause"))
        while paused and not cmd.get("stop") and self._signal is None:
            time.sleep(0.2)
            cmd = self._next_command() or {}
            if cmd:
                self._apply(cmd, loop, opt, sched, record_cmds)
                paused = cmd.get("pause") is not False
        return bool(cmd.get("stop"))

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, train: tuple[torch.Tensor, ...], val: tuple[torch.Tensor, ...]) -> TrainSummary:
        cfg, started = self.cfg, time.perf_counter()
        n = check_split("train", train)
        check_split("val", val)
        streamed = _nbytes(train) > cfg.loader_threshold_bytes
        if not streamed:
            train = self.on_device(train)
        on_host = [t.device.type == "cpu" for t in train]
        bs = min(cfg.batch_size, n)
        # A lone trailing sample would break BatchNorm; it is left out of that epoch instead.
        steps = n // bs + (1 if n % bs >= 2 else 0)
        warmup, total = round(cfg.warmup_epochs * steps), cfg.epochs * steps

        seed_everything(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = self._make_optimizer()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, cfg.min_lr_ratio))
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self._best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        loop, resumed_from = _Loop(), None
        if self.checkpoint_dir is not None:
            point = ckpt.latest_valid(self.checkpoint_dir, self.log)
            if point is not None:
                fresh = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                try:
                    loop = self._restore(point, gen, opt, sched, scaler)
                    resumed_from = str(point.path)
                    self.log.info(f"resuming from {point.path} (epoch {loop.epoch}, step {loop.step})")
                except (RuntimeError, KeyError, ValueError, TypeError) as exc:
                    self.log.warning(f"checkpoint {point.path} does not fit this model ({exc}); starting fresh")
                    self.model.load_state_dict(fresh)
                    seed_everything(cfg.seed)
                    gen.manual_seed(cfg.seed)
                    opt = self._make_optimizer()
                    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total, cfg.min_lr_ratio))

        params = [p for p in self.model.parameters() if p.requires_grad]
        run_start_epoch = loop.epoch
        with fit_process_settings(self.device), self._signals_deferred():
            while loop.epoch < cfg.epochs and not loop.finished:
                if loop.step == 0:
                    loop.shuffle_state = ckpt.rng_state_to_text(gen.get_state())
                else:  # mid-epoch resume: replay this epoch's permutation
                    gen.set_state(ckpt.rng_state_from_text(loop.shuffle_state))
                perm = torch.randperm(n, generator=gen)  # on the host: the same order on every device
                batches = [perm[i * bs:(i + 1) * bs] for i in range(steps)]
                if streamed:
                    dataset = torch.utils.data.TensorDataset(*train)
                    source = torch.utils.data.DataLoader(dataset, sampler=batches[loop.step:], batch_size=None,
                                                         pin_memory=self.device.type == "cuda" and train[0].device.type == "cpu")
                else:
                    perm_dev = perm.to(self.device) if not all(on_host) else perm
                    source = (tuple(t[perm[i * bs:(i + 1) * bs]] if host else t[perm_dev[i * bs:(i + 1) * bs]]
                                    for t, host in zip(train, on_host))
                              for i in range(loop.step, steps))
                self.model.train()
                t0, loss_sum, cmds, stop, lr_used = time.perf_counter(), None, [], False, opt.param_groups[0]["lr"]
                for batch in source:
                    if streamed:
                        batch = tuple(t if i in self.host_fields else t.to(self.device, non_blocking=True)
                                      for i, t in enumerate(batch))
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
                    stop = self._poll_control(loop, opt, sched, cmds)
                    if STEP_DELAY_S:
                        time.sleep(STEP_DELAY_S)
                    if self._signal is not None and loop.step < steps:
                        loop.loss_sum += float(loss_sum)
                        loop.epoch_time += time.perf_counter() - t0
                        raise TrainingInterrupted(self._signal, self._save(loop, gen, opt, sched, scaler))
                    if stop:
                        break
                loop.loss_sum += float(loss_sum) if loss_sum is not None else 0.0
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                loop.epoch_time += time.perf_counter() - t0
                self._end_epoch(loop, val, lr_used, cmds, stop, run_start_epoch, started, gen, opt, sched, scaler)
                if self._signal is not None:
                    raise TrainingInterrupted(self._signal, self._last_saved)
        self.model.load_state_dict(self._best_state)
        return TrainSummary(
            history=loop.history, best_epoch=loop.best_epoch,
            best_metric=loop.best_metric if loop.best_metric is not None else float("nan"),
            epochs_run=loop.epoch, samples_per_s=loop.samples_total / max(loop.train_time_total, 1e-9),
            wall_time_s=time.perf_counter() - started, resumed_from=resumed_from,
            stopped_early=loop.stopped_early, device=str(self.device), notes=loop.notes,
        )

    def _end_epoch(self, loop: _Loop, val, lr_used, cmds, stop, run_start_epoch, started, gen, opt, sched, scaler):
        cfg = self.cfg
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
        if cmds:
            record["commands"] = cmds
        is_best = self._better(value, loop.best_metric)
        if is_best:
            loop.best_metric, loop.best_epoch, loop.bad_epochs = value, loop.epoch, 0
            self._best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            loop.bad_epochs += 1
        reason = None
        if stop:
            reason = "stop command"
        elif not math.isfinite(train_loss):
            reason = f"non-finite training loss {train_loss}"
        elif cfg.early_stopping_patience and loop.bad_epochs >= cfg.early_stopping_patience:
            reason = f"no {cfg.metric} improvement for {loop.bad_epochs} epochs"
        if reason:
            loop.finished = loop.stopped_early = True
            loop.notes.append({"epoch": loop.epoch, "stopped": reason})
        loop.history.append(record)
        due = cfg.checkpoint_interval and loop.epoch % cfg.checkpoint_interval == 0
        self._last_saved = None
        if due or is_best or loop.finished or loop.epoch == cfg.epochs or self._signal is not None:
            self._last_saved = self._save(loop, gen, opt, sched, scaler, is_best=is_best)
        done = loop.epoch - run_start_epoch
        eta = (time.perf_counter() - started) / max(done, 1) * (cfg.epochs - loop.epoch)
        self.log.info(
            f"epoch {loop.epoch}/{cfg.epochs} train_loss {train_loss:.4f} val_loss {metrics['loss']:.4f} "
            f"val_{cfg.metric} {value:.4f} lr {lr_used:.2e} {sps:.0f} samples/s eta {eta:.0f}s"
            + (f" (stopping: {reason})" if reason else "")
        )
        if self.on_epoch is not None:
            try:
                self.on_epoch(dict(record))
            except Exception as exc:  # a broken monitor must not kill a training run
                self.log.warning(f"on_epoch callback failed: {exc}")


def check_split(name: str, tensors: tuple[torch.Tensor, ...]) -> int:
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise DatasetError(f"{name} split: expected a non-empty tuple of tensors")
    n = len(tensors[0])
    if n == 0 or any(len(t) != n for t in tensors):
        raise DatasetError(f"{name} split: tensors must share a non-zero first dimension, got {[tuple(t.shape) for t in tensors]}")
    return n
