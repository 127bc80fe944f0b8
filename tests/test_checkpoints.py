"""Checkpoints: format round trip, exact resume, kill -9 / SIGTERM recovery, corruption, pickle refusal, retention."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _train_worker as worker
from unified_pipeline.errors import IntegrityError
from unified_pipeline.training import checkpoints as ck

torch.set_num_threads(1)
WORKER = Path(__file__).with_name("_train_worker.py")
ROOT = WORKER.parents[1]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


@pytest.fixture(scope="module")
def reference():
    """Weights of an uninterrupted 6-epoch run (no checkpoints)."""
    model, summary = worker.train(None, epochs=6)
    return {k: v.clone() for k, v in model.state_dict().items()}, summary


def test_round_trip(tmp_path):
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(7)
    state = {"model": m.state_dict(), "optim": opt.state_dict(), "rng": ck.capture_rng(gen),
             "loop": {"epoch": 4, "history": [{"a": 1.5, "b": float("inf")}], "best": None}}
    path = ck.save_checkpoint(tmp_path, 4, 0, state)
    assert path.name == "ckpt-epoch0004"
    manifest = json.loads((path / ck.MANIFEST_FILE).read_text())
    assert manifest["files"][ck.TENSORS_FILE] == hashlib.sha256((path / ck.TENSORS_FILE).read_bytes()).hexdigest()
    assert any(k.startswith("optim.state.") for k in load_file(str(path / ck.TENSORS_FILE)))
    got = ck.load_checkpoint(path).state
    _assert_same(got["model"], m.state_dict())
    m2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(m2.parameters())
    opt2.load_state_dict(got["optim"])  # int keys and tuple betas survive
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    _assert_same(opt2.state_dict()["state"][0], opt.state_dict()["state"][0])
    assert got["loop"] == state["loop"]
    expected = torch.randperm(10, generator=gen)
    ck.restore_rng(got["rng"], gen2 := torch.Generator())
    assert torch.equal(torch.randperm(10, generator=gen2), expected)


def test_resume_after_crash_is_bit_identical(tmp_path, reference):
    with pytest.raises(worker.Crash):
        worker.train(tmp_path, epochs=6, crash_after=3)
    assert [p.name for _k, p in ck.list_checkpoints(tmp_path)][-1] == "ckpt-epoch0003"
    model, summary = worker.train(tmp_path, epochs=6)
    assert summary.resumed_from.endswith("ckpt-epoch0003")
    _assert_same(model.state_dict(), reference[0])
    assert [r["val_loss"] for r in summary.history] == [r["val_loss"] for r in reference[1].history]
    assert summary.best_epoch == reference[1].best_epoch


def test_corrupt_newest_checkpoint_falls_back(tmp_path, reference, caplog):
    with pytest.raises(worker.Crash):
        worker.train(tmp_path, epochs=6, crash_after=4)
    newest = tmp_path / "ckpt-epoch0004"
    data = (newest / ck.TENSORS_FILE).read_bytes()
    (newest / ck.TENSORS_FILE).write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        model, summary = worker.train(tmp_path, epochs=6, log=logging.getLogger("t"))
    assert "ckpt-epoch0004" in caplog.text and summary.resumed_from.endswith("ckpt-epoch0003")
    _assert_same(model.state_dict(), reference[0])
    with pytest.raises(IntegrityError, match="manifest"):
        (tmp_path / "ckpt-epoch0006" / ck.MANIFEST_FILE).write_text("{")
        ck.load_checkpoint(tmp_path / "ckpt-epoch0006")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_files_are_never_loaded(tmp_path, caplog):
    marker = tmp_path / "unpickled"
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    payload = pickle.dumps(_Evil(marker))
    (ckdir / "model.pt").write_bytes(payload)
    (ckdir / "ckpt-epoch0099").write_bytes(payload)  # a file posing under a checkpoint name
    fake = ckdir / "ckpt-epoch0098"  # a folder whose "tensors" are a pickle with a matching manifest
    fake.mkdir()
    (fake / ck.TENSORS_FILE).write_bytes(payload)
    (fake / ck.STATE_FILE).write_text("{}")
    files = {n: hashlib.sha256((fake / n).read_bytes()).hexdigest() for n in (ck.TENSORS_FILE, ck.STATE_FILE)}
    (fake / ck.MANIFEST_FILE).write_text(json.dumps({"format": ck.FORMAT, "version": 1, "epoch": 98, "step": 0, "files": files}))
    with pytest.raises(IntegrityError, match="never loaded"):
        ck.load_checkpoint(ckdir / "model.pt")
    with pytest.raises(IntegrityError):
        ck.load_checkpoint(fake)
    with caplog.at_level(logging.WARNING):
        _, summary = worker.train(ckdir, epochs=2, log=logging.getLogger("t"))
    assert summary.resumed_from is None and summary.epochs_run == 2
    assert "model.pt" in caplog.text and "ckpt-epoch0098" in caplog.text
    assert not marker.exists()
    assert (ckdir / "model.pt").exists()  # reported, left alone


def test_retention_keeps_last_k_and_best(tmp_path):
    def flat_then_worse(model, split):
        out = worker.classification_metric_fn(model, split)
        out["accuracy"] = 1.0 if flat_then_worse.calls == 0 else 0.5  # best is epoch 1
        flat_then_worse.calls += 1
        return out

    flat_then_worse.calls = 0
    from unified_pipeline.training.trainer import Trainer, TrainerConfig

    tr, va = worker.make_data()
    t = Trainer(worker.build_model(), TrainerConfig(epochs=6, batch_size=32, checkpoint_interval=1, keep_last=2),
                loss_fn=worker.cross_entropy_loss, metric_fn=flat_then_worse, checkpoint_dir=tmp_path)
    s = t.fit(tr, va)
    assert s.best_epoch == 1
    assert [p.name for _k, p in ck.list_checkpoints(tmp_path)] == ["ckpt-epoch0001", "ckpt-epoch0005", "ckpt-epoch0006"]
    assert not any(p.name.startswith(".") and p.name != ck.LOCK_FILE for p in tmp_path.iterdir())


def _run_worker(ckpt_dir: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(ckpt_dir), str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early: {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the worker")
        time.sleep(0.02)


def test_sigkill_then_rerun_matches_uninterrupted(tmp_path, reference):
    ckdir, out = tmp_path / "ck", tmp_path / "final.safetensors"
    proc = _run_worker(ckdir, out, "6", "0.4")  # a real process, killed without warning
    _wait_for(lambda: (ckdir / "ckpt-epoch0002" / ck.MANIFEST_FILE).exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    model, summary = worker.train(ckdir, epochs=6)  # the rerun, to completion
    assert summary.resumed_from is not None and "ckpt-epoch000" in summary.resumed_from
    _assert_same(model.state_dict(), reference[0])


def test_sigterm_writes_checkpoint_then_exits(tmp_path, reference):
    from unified_pipeline.training.trainer import TrainingInterrupted

    ckdir = tmp_path / "ck"
    fired = []

    def send_sigterm():
        fired.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    # Slow steps (12 per epoch) so the signal lands mid-epoch 2; the trainer's handler catches it.
    timer = None

    def arm(rec):
        nonlocal timer
        if rec["epoch"] == 1:
            timer = threading.Timer(0.15, send_sigterm)
            timer.start()

    with pytest.raises(TrainingInterrupted) as info:
        worker.train(ckdir, epochs=6, step_sleep=0.03, on_epoch_hook=arm)
    assert fired and info.value.signum == signal.SIGTERM
    newest = ck.list_checkpoints(ckdir)[-1][1]
    assert info.value.checkpoint == newest and newest.name.startswith("ckpt-epoch0001-step")
    model, summary = worker.train(ckdir, epochs=6)
    assert summary.resumed_from == str(newest)
    _assert_same(model.state_dict(), reference[0])


def test_signal_handlers_restored_after_fit():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    worker.train(None, epochs=1)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
