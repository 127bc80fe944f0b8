"""Faults at the worst moments: SIGKILL mid-training, corrupt checkpoints, full disks, refused renames, racing writers."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _train_worker as worker
from unified_pipeline import atomic
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.errors import IntegrityError
from unified_pipeline.registry import ModelRegistry
from unified_pipeline.registry.index import read_index
from unified_pipeline.training import checkpoints as ck

torch.set_num_threads(1)
FAULT_WORKER = Path(__file__).with_name("_fault_worker.py")
ROOT = FAULT_WORKER.parents[1]
EPOCHS, INTERVAL = 8, 3


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


@pytest.fixture(scope="module")
def reference():
    model, summary = worker.train(None, epochs=EPOCHS)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _spawn(ckdir: Path, out: Path, log: Path, epoch_sleep: float, save_pause: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(FAULT_WORKER), str(ckdir), str(out), str(log), str(EPOCHS), str(INTERVAL),
            str(epoch_sleep), str(save_pause)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _wait_for_line(log: Path, line: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in _log_lines(log):
        assert proc.poll() is None, f"worker ended before logging {line!r}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"worker never logged {line!r}"
        time.sleep(0.005)


# ---------------------------------------------------------------- SIGKILL at the worst moments

EPOCH_SLEEP, SAVE_PAUSE = 0.08, 0.3


@pytest.mark.parametrize("after, delay", [
    ("start", 0.0),        # before any checkpoint: resume starts from scratch
    ("epoch 2", 0.0),      # right after a committed checkpoint
    ("epoch 4", 0.05),     # inside the epoch callback's wait, next epoch not started
    ("epoch 6", 0.12),     # in the middle of the next epoch
    ("mid-save 3", 0.0),   # inside a checkpoint write: tensors on disk, folder not committed
    ("mid-save 7", 0.0),
])
def test_sigkill_at_chosen_moments_resumes_newest_valid(tmp_path, reference, after, delay):
    """Kills are timed from the worker's own log lines, so each case lands where it says."""
    ckdir, out, log = tmp_path / "ck", tmp_path / "final.safetensors", tmp_path / "log.txt"
    proc = _spawn(ckdir, out, log, EPOCH_SLEEP, SAVE_PAUSE)
    _wait_for_line(log, after, proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    logged = [int(line.split()[1]) for line in _log_lines(log) if line.startswith("epoch ")]
    done_before = max(logged, default=0)
    partial = [p.name for p in ckdir.iterdir() if p.name.startswith(".") and p.name != ".lock"] if ckdir.exists() else []
    if after.startswith("mid-save"):
        assert partial, "the kill should have left a half-written checkpoint folder"
    else:
        assert not partial

    # Every visible checkpoint is complete: a kill mid-write leaves only a hidden partial folder.
    for _key, path in ck.list_checkpoints(ckdir):
        ck.load_checkpoint(path)
    newest = ck.latest_valid(ckdir)
    if after == "start":
        assert newest is None
    else:  # a real checkpoint to resume from, and no newer than the last finished epoch
        assert newest is not None and 0 <= done_before - newest.epoch < INTERVAL, (newest.epoch, done_before)
    model, summary = worker.train(ckdir, epochs=EPOCHS, checkpoint_interval=INTERVAL)
    assert summary.resumed_from == (str(newest.path) if newest else None)
    assert summary.epochs_run == EPOCHS and len(summary.history) == EPOCHS
    _same(model.state_dict(), reference)
    # Partial leftovers pruned; the folder's lock file stays.
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".") and p.name != ".lock"]


# ---------------------------------------------------------------- corrupt newest checkpoint

def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["json-byte", "tensor-byte", "manifest-gone", "tensor-gone", "json-replaced"])
def test_damaged_newest_checkpoint_is_skipped(tmp_path, reference, damage):
    with pytest.raises(worker.Crash):
        worker.train(tmp_path, epochs=EPOCHS, crash_after=4)
    newest = tmp_path / "ckpt-epoch0004"
    if damage == "json-byte":
        _flip(newest / ck.STATE_FILE, 40)
    elif damage == "tensor-byte":
        _flip(newest / ck.TENSORS_FILE, -3)  # inside the tensor data, header still parses
    elif damage == "manifest-gone":
        (newest / ck.MANIFEST_FILE).unlink()
    elif damage == "tensor-gone":
        (newest / ck.TENSORS_FILE).unlink()
    else:  # well-formed JSON with different content: only the checksum can tell
        state = json.loads((newest / ck.STATE_FILE).read_text())
        state["loop"]["epoch"] = 99
        (newest / ck.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(IntegrityError, match="ckpt-epoch0004"):
        ck.load_checkpoint(newest)
    assert ck.latest_valid(tmp_path).epoch == 3
    model, summary = worker.train(tmp_path, epochs=EPOCHS)
    assert summary.resumed_from.endswith("ckpt-epoch0003")
    _same(model.state_dict(), reference)


# ---------------------------------------------------------------- failing writes

def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _refuse_replace_of(name: str, monkeypatch):
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def _lineage():
    return {"data_versions": {"d": "1"}, "code_version": "c", "hparams": {}}


def _model_folder(path: Path, payload: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "weights.bin").write_bytes(payload)
    (path / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
    return path


def _registry_intact(reg: ModelRegistry, model: str, numbers: list[int]) -> None:
    index = read_index(reg.root / model, model)  # still a valid index
    assert sorted(map(int, index["versions"])) == numbers
    assert [v.number for v in reg.list(model)] == numbers
    for n in numbers:
        reg.verify(model, n)
    assert not [p for p in (reg.root / model).rglob("*") if p.name.endswith((".tmp", ".partial"))]


@pytest.mark.parametrize("fault", ["enospc-fsync", "eacces-version.json", "eacces-index.json"])
def test_registry_write_failure_keeps_previous_state(tmp_path, monkeypatch, fault):
    reg = ModelRegistry(tmp_path / "registry")
    reg.register("text_service", _model_folder(tmp_path / "a", b"first"), lineage=_lineage(), metric="accuracy")
    with monkeypatch.context() as m:
        if fault == "enospc-fsync":
            m.setattr(os, "fsync", _enospc)
        else:
            _refuse_replace_of(fault.split("-", 1)[1], m)
        with pytest.raises(OSError) as info:
            reg.register("text_service", _model_folder(tmp_path / "b", b"second"), lineage=_lineage(), metric="accuracy")
    assert info.value.errno in (errno.ENOSPC, errno.EACCES)
    if fault == "eacces-index.json":  # the copied folder was renamed in but never listed: not a version
        assert (reg.root / "text_service" / "v2").exists()
    _registry_intact(reg, "text_service", [1])
    assert reg.get("text_service", "production").number == 1
    # The disk is back: the next registration takes the number the failed one never claimed.
    again = reg.register("text_service", _model_folder(tmp_path / "c", b"third"), lineage=_lineage(), metric="accuracy")
    assert again.version.number == 2
    _registry_intact(reg, "text_service", [1, 2])


def test_event_log_failure_after_index_leaves_consistent_registry(tmp_path, monkeypatch):
    reg = ModelRegistry(tmp_path / "registry")
    reg.register("text_service", _model_folder(tmp_path / "a", b"first"), lineage=_lineage(), metric="accuracy")
    with monkeypatch.context() as m:
        _refuse_replace_of("events.jsonl", m)
        with pytest.raises(PermissionError):
            reg.register("text_service", _model_folder(tmp_path / "b", b"second"), lineage=_lineage(), metric="accuracy")
    # The index was committed before the event log write failed: v2 is a complete version whose
    # own events are missing, and the earlier events are untouched.
    _registry_intact(reg, "text_service", [1, 2])
    assert [e["event"] for e in reg.events("text_service")] == ["register", "promote"]
    assert all(e["version"].endswith("/v1") for e in reg.events("text_service"))


@pytest.mark.parametrize("fault", ["enospc-fsync", "eacces-replace"])
def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch, fault):
    with pytest.raises(worker.Crash):
        worker.train(tmp_path, epochs=EPOCHS, crash_after=2)
    before = sorted(p.name for p in tmp_path.iterdir())
    state = ck.load_checkpoint(tmp_path / "ckpt-epoch0002").state
    with monkeypatch.context() as m:
        if fault == "enospc-fsync":
            m.setattr(os, "fsync", _enospc)
        else:
            _refuse_replace_of(ck.TENSORS_FILE, m)
        with pytest.raises(OSError):
            ck.save_checkpoint(tmp_path, 3, 0, state)
        # The trainer itself surfaces the failure instead of training on without checkpoints.
        with pytest.raises(OSError):
            worker.train(tmp_path, epochs=EPOCHS)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert ck.latest_valid(tmp_path).epoch == 2
    _same(ck.load_checkpoint(tmp_path / "ckpt-epoch0002").state["model"], state["model"])


@pytest.mark.parametrize("fault", ["enospc-fsync", "eacces-replace"])
def test_tensor_bundle_write_failure_keeps_previous(tmp_path, monkeypatch, fault):
    def bundle(v: float) -> TensorBundle:
        return TensorBundle({"train/x": torch.full((4, 2), v)}, {"dataset": "d", "kind": "causal", "v": v},
                            {"samples": {"train": ["a", "b", "c", "d"]}})

    root = tmp_path / "tensors" / "d"
    with atomic.atomic_dir(root / "v1") as tmp:
        bundle(1.0).save(tmp)
    with monkeypatch.context() as m:
        if fault == "enospc-fsync":
            m.setattr(os, "fsync", _enospc)
        else:
            _refuse_replace_of("meta.json", m)
        with pytest.raises(OSError):
            with atomic.atomic_dir(root / "v2") as tmp:
                bundle(2.0).save(tmp)
        with pytest.raises(OSError):  # overwriting a single file in place fails the same clean way
            atomic.write_json(root / "v1" / "meta.json", {"broken": True})
    assert sorted(p.name for p in root.iterdir()) == ["v1"]
    names = sorted(p.name for p in (root / "v1").iterdir())
    assert names[:3] == ["meta.json", "samples.json", "shards.json"] and len(names) == 4
    assert names[3].startswith("train-00000-") and names[3].endswith(".safetensors")
    got = TensorBundle.load(root / "v1")
    assert got.meta["v"] == 1.0 and torch.equal(got.tensors["train/x"], torch.full((4, 2), 1.0))


# ---------------------------------------------------------------- two writers at once

def test_two_trainings_of_one_model_at_once(tmp_path, reference):
    """Two processes train the same model into the same checkpoint folder: both end with the same weights."""
    ckdir = tmp_path / "ck"
    procs = [_spawn(ckdir, tmp_path / f"out{i}.safetensors", tmp_path / f"log{i}.txt", 0.05) for i in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    for i in range(2):
        _same(load_file(str(tmp_path / f"out{i}.safetensors")), reference)
    for _key, path in ck.list_checkpoints(ckdir):
        ck.load_checkpoint(path)


def test_two_runs_of_the_same_model_train_once(home, tmp_path, monkeypatch):
    """Two processes start the same training at once: one trains, the other waits and reuses it."""
    import json as _json
    import subprocess
    import sys

    import tiny_data

    tiny_data.vision(tmp_path / "raw")
    from unified_pipeline.datasets import discover
    from unified_pipeline.assets.data_assets import build_manifest, build_tensors

    (ref,) = discover()
    version, _, manifest = build_manifest(ref)
    folder, _ = build_tensors(ref, manifest, version, {})
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from unified_pipeline.train_model import train_or_reuse\n"
        "o = train_or_reuse('vision_service', {'tiny_images': Path(sys.argv[1])},\n"
        "    {'epochs': 2, 'batch_size': 8, 'learning_rate': 0.003, 'seed': 0})\n"
        "print(json.dumps({'version': o.version, 'reused': o.reused}))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(folder)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [_json.loads(p.communicate(timeout=240)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert {o["version"] for o in outs} == {"vision_service/v1"}
    assert sorted(o["reused"] for o in outs) == [False, True]
    from unified_pipeline.registry import ModelRegistry

    assert [v.name for v in ModelRegistry().list("vision_service")] == ["vision_service/v1"]
