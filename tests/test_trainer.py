"""Trainer: learns, lr schedule, early stopping, best-weight restore, determinism, control file, fit_classifier."""
from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass

import pytest
import torch

import _train_worker as worker
from unified_pipeline.errors import ConfigError
from unified_pipeline.models.base import BaseModel, register_architecture
from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
from unified_pipeline.training.control import write_command
from unified_pipeline.training.fit_settings import lr_factor
from unified_pipeline.training.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)


@dataclass
class TinyMLPConfig:
    d_in: int = 6
    hidden: int = 16
    classes: int = 3


@register_architecture("test_tiny_mlp")
class TinyMLP(BaseModel):
    config_cls = TinyMLPConfig

    def __init__(self, config: TinyMLPConfig):
        super().__init__(config)
        self.net = torch.nn.Sequential(torch.nn.Linear(config.d_in, config.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(config.hidden, config.classes))

    def forward(self, x):
        return self.net(x)


def test_learns_separable_problem_and_restores_best():
    model, summary = worker.train(None, epochs=8)
    (_, _), (xv, yv) = worker.make_data()
    assert summary.best_metric > 0.8  # 3 classes: chance is ~0.33
    assert summary.epochs_run == 8 and len(summary.history) == 8
    rec = summary.history[0]
    assert {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "samples_per_s", "time_s"} <= set(rec)
    assert summary.history[-1]["train_loss"] < summary.history[0]["train_loss"]
    # The returned model holds the best epoch's weights, not the last epoch's.
    acc = classification_metric_fn(model.eval(), (xv, yv))["accuracy"]
    assert acc == summary.best_metric
    assert summary.samples_per_s > 0


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 4, 20, 0.05) == pytest.approx(0.25)
    assert lr_factor(3, 4, 20, 0.05) == pytest.approx(1.0)
    assert lr_factor(4, 4, 20, 0.05) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20, 0.05) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(20, 4, 20, 0.05) == pytest.approx(0.05)
    assert lr_factor(0, 0, 10, 0.1) == pytest.approx(1.0)


def test_lr_per_step_in_training():
    (x, y), val = worker.make_data()
    n = len(x)
    # One step per epoch, so each history lr is exactly the lr of step epoch-1.
    _, summary = worker.train(None, epochs=6, batch_size=n, warmup_epochs=2, learning_rate=0.1, min_lr_ratio=0.1)
    got = [r["lr"] for r in summary.history]
    want = [0.1 * lr_factor(s, 2, 6, 0.1) for s in range(6)]
    assert got == pytest.approx(want)


def test_early_stopping_triggers():
    (x, y), val = worker.make_data()
    calls = []

    def flat_metric(model, split):
        calls.append(1)
        out = classification_metric_fn(model, split)
        out["accuracy"] = 0.5  # never improves after the first epoch
        return out

    t = Trainer(worker.build_model(), TrainerConfig(epochs=20, batch_size=32, early_stopping_patience=2),
                loss_fn=cross_entropy_loss, metric_fn=flat_metric, checkpoint_dir=None)
    s = t.fit((x, y), val)
    assert s.stopped_early and s.epochs_run == 3 and s.best_epoch == 1 and len(calls) == 3


def test_deterministic_runs():
    m1, s1 = worker.train(None, epochs=3)
    m2, s2 = worker.train(None, epochs=3)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["train_loss"] for r in s1.history] == [r["train_loss"] for r in s2.history]
    m3, _ = worker.train(None, epochs=3, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values()))


def test_fit_settings_deterministic_no_nan_fill_old_objects_frozen_and_restored_after():
    (x, y), val = worker.make_data()
    seen = []

    def state():
        return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory, gc.get_freeze_count() > 0)

    def loss(model, batch):
        seen.append(state())
        return cross_entropy_loss(model, batch)

    def fit():
        Trainer(worker.build_model(), TrainerConfig(epochs=1, batch_size=32), loss_fn=loss,
                metric_fn=classification_metric_fn, checkpoint_dir=None).fit((x, y), val)

    before = state()
    assert before[3] is False
    fit()
    assert set(seen) == {(True, True, False, True)}
    assert state() == before
    try:  # a caller's own strict setting comes back as it was
        torch.use_deterministic_algorithms(True, warn_only=False)
        fit()
        assert state() == (True, False, before[2], False)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_from_hparams_aliases_and_errors():
    cfg = TrainerConfig.from_hparams(
        {"epochs": 7, "batch_size": "32", "lr": 0.02, "keep_last_checkpoints": 3, "use_gpu": True, "widths": [8]},
        device="cpu", seed=5)
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.keep_last, cfg.seed) == (7, 32, 0.02, 3, 5)
    assert TrainerConfig.from_hparams({"mixed_precision": False}).precision == "fp32"
    assert TrainerConfig.from_hparams({"early_stopping": False, "early_stopping_patience": 4}).early_stopping_patience == 0
    with pytest.raises(ConfigError, match="epochs"):
        TrainerConfig.from_hparams({"epochs": 0})
    with pytest.raises(ConfigError, match="batch_size"):
        TrainerConfig.from_hparams({"batch_size": "many"})
    with pytest.raises(ConfigError, match="precision"):
        TrainerConfig.from_hparams({"precision": "fp8"})


def test_control_lr_and_stop(tmp_path):
    ctl = tmp_path / "control.json"
    (x, y), val = worker.make_data()
    write_command(ctl, lr=0.5)  # picked up after the first step
    wrote = []

    def on_epoch(rec):
        if rec["epoch"] == 2:
            write_command(ctl, stop=True)
            wrote.append(rec)

    model = worker.build_model()
    cfg = TrainerConfig(epochs=10, batch_size=len(x), learning_rate=0.1, warmup_epochs=0, checkpoint_interval=0)
    t = Trainer(model, cfg, loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn,
                checkpoint_dir=tmp_path / "ck", on_epoch=on_epoch, control_file=ctl)
    s = t.fit((x, y), val)
    assert s.history[0]["commands"] == [{"lr": 0.5}]
    # The next step uses the new lr exactly, and the schedule continues from that level.
    assert s.history[1]["lr"] == pytest.approx(0.5)
    assert s.history[2]["lr"] == pytest.approx(0.5 * lr_factor(2, 0, 10, 0.05) / lr_factor(1, 0, 10, 0.05))
    assert s.stopped_early and s.epochs_run == 3 and s.history[2]["commands"] == [{"stop": True}]
    assert not ctl.exists()  # consumed, so it cannot leak into a later run
    assert any(n.get("stopped") == "stop command" for n in s.notes)
    # A rerun resumes the stopped run and does not train further.
    t2 = Trainer(worker.build_model(), cfg, loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn,
                 checkpoint_dir=tmp_path / "ck")
    s2 = t2.fit((x, y), val)
    assert s2.epochs_run == 3 and s2.resumed_from
    for a, b in zip(model.state_dict().values(), t2.model.state_dict().values()):
        assert torch.equal(a, b)


def test_control_pause_then_resume(tmp_path):
    """The run waits while paused; the resume is written from inside the run once the pause is applied."""
    ctl = tmp_path / "control.json"
    write_command(ctl, pause=True)
    seen = []

    class ResumeWhenPaused(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            seen.append(msg)
            if "control: applied {'pause': True}" in msg:
                assert not ctl.exists()  # claimed before it was applied
                write_command(ctl, pause=False)

    log = logging.getLogger("test_control_pause_then_resume")
    log.setLevel(logging.INFO)
    handler = ResumeWhenPaused()
    log.addHandler(handler)
    try:
        _, s = worker.train(None, epochs=2, control_file=ctl, log=log)
    finally:
        log.removeHandler(handler)
    commands = [n for n in s.notes if "command" in n]
    assert [n["command"] for n in commands] == [{"pause": True}, {"pause": False}]
    # Both were applied at the first step, inside the pause loop, which waited (0.2 s a poll) for the resume.
    assert [(n["epoch"], n["step"]) for n in commands] == [(1, 1), (1, 1)]
    assert commands[1]["time"] - commands[0]["time"] >= 0.15
    assert s.epochs_run == 2 and s.history[0]["commands"] == [{"pause": True}, {"pause": False}]
    applied = [m for m in seen if m.startswith("control: applied")]
    assert len(applied) == 2 and not ctl.exists()


def test_bad_control_command_is_ignored_with_warning(tmp_path, caplog):
    ctl = tmp_path / "control.json"
    ctl.write_text(json.dumps({"lr": -1}))
    with caplog.at_level(logging.WARNING):
        _, s = worker.train(None, epochs=1, control_file=ctl, log=logging.getLogger("t"))
    assert s.epochs_run == 1 and "lr" in caplog.text


def test_fit_classifier_writes_artefacts(tmp_path):
    from unified_pipeline.training.classification import fit_classifier
    from unified_pipeline.training.job import FitJob

    (x, y), (xv, yv) = worker.make_data()
    torch.manual_seed(0)
    model = TinyMLP(TinyMLPConfig())
    records = []
    job = FitJob(model="vision_service", datasets={}, upstream={}, hparams={"epochs": 4, "batch_size": 16, "lr": 3e-2},
                 device="cpu", checkpoint_dir=tmp_path / "ck", out_dir=tmp_path / "out", on_epoch=records.append)
    data = {"train": ((x,), y), "val": ((xv,), yv), "test": ((xv,), yv)}
    res = fit_classifier(job, model, data, classes=["a", "b", "c"], extra={"dataset": "toy"},
                         baseline={"accuracy": 0.33}, baseline_name="majority")
    out = tmp_path / "out"
    res.write(out)  # as the pipeline does after every fit
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] == {"accuracy": 0.33}
    assert set(metrics["test"]) >= {"loss", "accuracy", "macro_f1"}
    # It learned: chance is ~0.33, and an untrained copy of this model scores about 0.4.
    assert metrics["test"]["accuracy"] >= 0.8 and metrics["test"]["macro_f1"] >= 0.75
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 4 == len(records) == res.epochs_run
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    # metrics.json holds what the saved model scores on the test split, not a number from elsewhere.
    assert classification_metric_fn(BaseModel.load(out).eval(), (xv, yv))["accuracy"] == pytest.approx(
        metrics["test"]["accuracy"])
    assert all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in res.plots.values()) and len(res.plots) == 3
    loaded = BaseModel.load(out)
    assert loaded.extra == {"classes": ["a", "b", "c"], "dataset": "toy"}
    assert res.param_count == model.num_parameters() and res.notes["baseline_name"] == "majority"
