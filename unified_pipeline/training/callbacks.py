"""Hooks into `Trainer.fit` that decide when a run stops, apply live commands and report epochs.

A callback overrides some of the `Callback` methods; the trainer calls each callback in list
order. The default set (`default_callbacks`) is live control, early stopping and an epoch
monitor. Callbacks keep what must survive a resume in the `FitState` (its `loop` is saved with
every checkpoint), not in themselves: a resumed run builds them again.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

from unified_pipeline.errors import PipelineError
from unified_pipeline.training.control import ControlPoller
from unified_pipeline.training.fit_state import FitState


class Callback:
    def on_fit_start(self, state: FitState) -> None:
        """After a resume (if any), before the first step of this run."""

    def on_step_end(self, state: FitState) -> str | None:
        """After each optimiser step; a reason ends the epoch now and the run after it."""
        return None

    def on_validation_end(self, state: FitState, record: dict[str, Any]) -> str | None:
        """Once the epoch's record (history entry) is measured and the best epoch updated, before
        the checkpoint; may add keys to `record`. A reason stops the run after this epoch."""
        return None

    def on_epoch_end(self, state: FitState, record: dict[str, Any]) -> None:
        """After the epoch's checkpoint and log line; `record` is a copy of the history entry."""


class LiveControl(Callback):
    """Applies commands from a `ControlPoller` at step boundaries: lr changes (the schedule goes
    on from the new level), pause (waits here until resumed, stopped or signalled) and stop.
    Each applied command is a note and goes into its epoch's record under "commands"."""

    STOP_REASON = "stop command"

    def __init__(self, control: ControlPoller, log: Any):
        self.control, self.log = control, log
        self.commands: list[dict] = []  # applied in the current epoch
        self.stop_requested = False

    def on_fit_start(self, state: FitState) -> None:
        self.commands, self.stop_requested = [], False

    def on_step_end(self, state: FitState) -> str | None:
        loop = state.loop
        self.control.position = (loop.epoch + 1, loop.step)  # where a command would apply, as recorded in notes
        cmd = self._next_command()
        if cmd is None:
            return None
        self._apply(cmd, state)
        paused = bool(cmd.get("pause"))
        while paused and not cmd.get("stop") and state.signal is None:
            time.sleep(0.2)
            cmd = self._next_command() or {}
            if cmd:
                self._apply(cmd, state)
                paused = cmd.get("pause") is not False
        self.stop_requested = bool(cmd.get("stop"))
        return self.STOP_REASON if self.stop_requested else None

    def on_validation_end(self, state: FitState, record: dict[str, Any]) -> str | None:
        if self.commands:
            record["commands"] = self.commands
        stop = self.STOP_REASON if self.stop_requested else None
        self.commands, self.stop_requested = [], False
        return stop

    def _next_command(self) -> dict | None:
        try:
            return self.control.poll()
        except PipelineError as exc:
            self.log.warning(f"ignoring control command: {exc}")
            return None

    def _apply(self, cmd: dict, state: FitState) -> None:
        opt, sched, loop = state.optimizer, state.scheduler, state.loop
        if "lr" in cmd:
            factor = cmd["lr"] / opt.param_groups[0]["lr"]
            for g in opt.param_groups:
                g["lr"] *= factor
            sched.base_lrs = [b * factor for b in sched.base_lrs]  # the schedule continues from the new level
        loop.notes.append({"epoch": loop.epoch + 1, "step": loop.step, "command": cmd, "time": time.time()})
        self.commands.append(cmd)
        self.log.info(f"control: applied {cmd} at epoch {loop.epoch + 1} step {loop.step}")


class EarlyStopping(Callback):
    """Stops on a non-finite training loss, or after `patience` epochs (0: never) without a better
    validation `metric` (the trainer counts them in `loop.bad_epochs`)."""

    def __init__(self, patience: int, metric: str):
        self.patience, self.metric = patience, metric

    def on_validation_end(self, state: FitState, record: dict[str, Any]) -> str | None:
        train_loss = record["train_loss"]
        if not math.isfinite(train_loss):
            return f"non-finite training loss {train_loss}"
        bad = state.loop.bad_epochs
        if self.patience and bad >= self.patience:
            return f"no {self.metric} improvement for {bad} epochs"
        return None


class EpochMonitor(Callback):
    """Hands each epoch's record to `on_epoch` (progress files, live plots); an Exception it raises
    is logged, not raised: a broken monitor must not kill a training run."""

    def __init__(self, on_epoch: Callable[[dict], Any], log: Any):
        self.on_epoch, self.log = on_epoch, log

    def on_epoch_end(self, state: FitState, record: dict[str, Any]) -> None:
        try:
            self.on_epoch(record)
        except Exception as exc:
            self.log.warning(f"on_epoch callback failed: {exc}")


def default_callbacks(control: ControlPoller, patience: int, metric: str, log: Any,
                      on_epoch: Callable[[dict], Any] | None = None) -> list[Callback]:
    """What `Trainer` uses unless given `callbacks=`: a stop command outranks early stopping."""
    out: list[Callback] = [LiveControl(control, log), EarlyStopping(patience, metric)]
    if on_epoch is not None:
        out.append(EpochMonitor(on_epoch, log))
    return out
