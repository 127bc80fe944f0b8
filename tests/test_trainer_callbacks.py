"""Trainer callbacks: the hooks run where documented, callbacks= replaces the default set, and the
checkpoint a fit writes keeps the stored format older checkpoints resume from."""
from __future__ import annotations

import logging

import pytest
import torch

import _train_worker as worker
from unified_pipeline.errors import ConfigError
from unified_pipeline.training import checkpoints as ck
from unified_pipeline.training.callbacks import Callback, EarlyStopping, LiveControl
from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
from unified_pipeline.training.control import RecordedCommands
from unified_pipeline.training.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)

# What checkpoints have always held; a resume reads these names back, so they cannot change.
CHECKPOINT_KEYS = {"model", "best", "optim", "sched", "scaler", "rng", "loop", "config"}
LOOP_FIELDS = {"epoch", "step", "best_metric", "best_epoch", "bad_epochs", "finished", "stopped_early", "history",
               "notes", "loss_sum", "epoch_samples", "epoch_time", "samples_total", "train_time_total",
               "shuffle_state"}


class Recorder(Callback):
    def __init__(self):
        self.calls: list[tuple] = []

    def on_fit_start(self, state):
        self.calls.append(("fit_start", state.loop.epoch))

    def on_step_end(self, state):
        self.calls.append(("step", state.loop.epoch + 1, state.loop.step))

    def on_validation_end(self, state, record):
        self.calls.append(("validation", record["epoch"]))
        record["seen_by"] = "recorder"

    def on_epoch_end(self, state, record):
        self.calls.append(("epoch_end", dict(record)))


class StopAtStep(Callback):
    def __init__(self, epoch: int, step: int):
        self.at = (epoch, step)

    def on_step_end(self, state):
        return "enough" if (state.loop.epoch + 1, state.loop.step) == self.at else None


def _flat(model, split):
    out = classification_metric_fn(model, split)
    out["accuracy"] = 0.5  # never improves after the first epoch
    return out


def _trainer(cfg: TrainerConfig, metric_fn=classification_metric_fn, **kw) -> Trainer:
    return Trainer(worker.build_model(), cfg, loss_fn=cross_entropy_loss, metric_fn=metric_fn, **kw)


def test_hooks_run_at_fit_start_each_step_and_each_epoch_in_order():
    (x, y), val = worker.make_data()  # 180 samples: 4 steps of 48, the last one 36
    rec = Recorder()
    s = _trainer(TrainerConfig(epochs=2, batch_size=48), checkpoint_dir=None, callbacks=[rec]).fit((x, y), val)
    steps = [("step", e, i) for e in (1, 2) for i in range(1, 5)]
    names = [c[0] for c in rec.calls]
    assert names == ["fit_start", *["step"] * 4, "validation", "epoch_end", *["step"] * 4, "validation", "epoch_end"]
    assert [c for c in rec.calls if c[0] == "step"] == steps
    # A key added at validation end is in the history record; the epoch-end hook gets that record.
    assert all(r["seen_by"] == "recorder" for r in s.history)
    assert [c[1] for c in rec.calls if c[0] == "epoch_end"] == s.history


def test_given_callbacks_replace_the_default_set(tmp_path):
    (x, y), val = worker.make_data()
    cfg = TrainerConfig(epochs=5, batch_size=48, early_stopping_patience=1)
    # Without EarlyStopping in the list, the patience setting has no effect...
    s = _trainer(cfg, _flat, checkpoint_dir=None, callbacks=[]).fit((x, y), val)
    assert s.epochs_run == 5 and not s.stopped_early and s.notes == []
    # ...and with it, the same run stops as the default set would.
    s = _trainer(cfg, _flat, checkpoint_dir=None, callbacks=[EarlyStopping(1, "accuracy")]).fit((x, y), val)
    assert s.stopped_early and s.epochs_run == 2
    assert s.notes == [{"epoch": 2, "stopped": "no accuracy improvement for 1 epochs"}]
    # A step-level stop ends that epoch early, is the stop reason and is checkpointed as finished.
    s = _trainer(cfg, checkpoint_dir=tmp_path, callbacks=[StopAtStep(2, 2)]).fit((x, y), val)
    assert s.stopped_early and s.epochs_run == 2 and s.notes == [{"epoch": 2, "stopped": "enough"}]
    assert s.history[1]["samples_per_s"] > 0 and s.history[1]["time_s"] > 0
    newest = ck.load_checkpoint(ck.list_checkpoints(tmp_path)[-1][1]).state
    assert newest["loop"]["finished"] and newest["loop"]["epoch"] == 2


def test_callbacks_cannot_be_given_next_to_on_epoch_or_control_file(tmp_path):
    with pytest.raises(ConfigError, match="callbacks="):
        _trainer(TrainerConfig(), checkpoint_dir=None, callbacks=[], on_epoch=print)
    with pytest.raises(ConfigError, match="callbacks="):
        _trainer(TrainerConfig(), checkpoint_dir=None, callbacks=[], control_file=tmp_path / "control.json")


def test_live_control_replays_recorded_commands_at_their_step():
    (x, y), val = worker.make_data()
    cfg = TrainerConfig(epochs=4, batch_size=48, learning_rate=0.1, warmup_epochs=0)
    applied = [{"epoch": 2, "step": 1, "command": {"lr": 0.02}}, {"epoch": 3, "step": 3, "command": {"stop": True}}]
    log = logging.getLogger("test_live_control")
    s = _trainer(cfg, checkpoint_dir=None, callbacks=[LiveControl(RecordedCommands(applied), log)]).fit((x, y), val)
    assert [(n["epoch"], n["step"], n["command"]) for n in s.notes if "command" in n] == \
        [(2, 1, {"lr": 0.02}), (3, 3, {"stop": True})]
    assert s.history[1]["commands"] == [{"lr": 0.02}] and s.history[2]["commands"] == [{"stop": True}]
    assert "commands" not in s.history[0]
    assert s.notes[-1] == {"epoch": 3, "stopped": "stop command"} and s.epochs_run == 3 and s.stopped_early


def test_checkpoint_keeps_the_stored_keys_and_loop_fields(tmp_path):
    (x, y), val = worker.make_data()
    _trainer(TrainerConfig(epochs=2, batch_size=48, checkpoint_interval=1), checkpoint_dir=tmp_path).fit((x, y), val)
    for _key, path in ck.list_checkpoints(tmp_path):
        state = ck.load_checkpoint(path).state
        assert set(state) == CHECKPOINT_KEYS
        assert set(state["loop"]) == LOOP_FIELDS
