"""Registry under real parallel processes: distinct numbers, intact index, killed writers invisible."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unified_pipeline.registry import ModelRegistry, RegistryError
from unified_pipeline.registry.store import COPY_DELAY_ENV

WORKER = Path(__file__).with_name("_registry_worker.py")
PROJECT = Path(__file__).resolve().parent.parent


def _spawn(root: Path, model: str, count: int, workdir: Path, label: str, delay: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(PROJECT), **{COPY_DELAY_ENV: str(delay)})
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(root), model, str(count), str(workdir), label],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def test_parallel_registration_gives_distinct_numbers(tmp_path):
    root = tmp_path / "registry"
    procs = [_spawn(root, "vision_service", 5, tmp_path / "src", f"w{k}") for k in range(4)]
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outputs += [json.loads(line) for line in out.splitlines()]
    numbers = sorted(o["number"] for o in outputs)
    assert numbers == list(range(1, 21))

    reg = ModelRegistry(root)
    index = json.loads((root / "vision_service" / "index.json").read_text())
    assert index["next_number"] == 21 and sorted(map(int, index["versions"])) == numbers
    assert index["aliases"]["latest"] == 20
    versions = reg.list("vision_service")
    assert [v.number for v in versions] == numbers
    for o in outputs:  # each process's registration landed in the number it was told
        v = reg.get("vision_service", o["number"])
        assert v.fingerprint == f"{o['label']}-{o['i']}"
        reg.verify(v)
    registers = [e for e in reg.events("vision_service") if e["event"] == "register"]
    assert len(registers) == 20
    assert not [p for p in (root / "vision_service").iterdir() if p.name.endswith(".partial")]


def _wait_for_partial(model_dir: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if model_dir.is_dir() and any(p.name.endswith(".partial") for p in model_dir.iterdir()):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pytest.fail("the worker never started copying")


def _lineage():
    return {"data_versions": {"d": "1"}, "code_version": "c", "hparams": {}}


def test_killed_registration_leaves_nothing_visible(tmp_path):
    root = tmp_path / "registry"
    reg = ModelRegistry(root)
    first = tmp_path / "first"
    first.mkdir()
    (first / "weights.bin").write_bytes(b"first")
    reg.register("audio_service", first, lineage=_lineage(), metrics={"test": {"accuracy": 0.5}}, metric="accuracy")

    proc = _spawn(root, "audio_service", 1, tmp_path / "src", "slow", delay=5.0)
    try:
        _wait_for_partial(root / "audio_service", proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    mdir = root / "audio_service"
    assert any(p.name.endswith(".partial") for p in mdir.iterdir())  # the leftover exists ...
    assert not (mdir / "v2").exists()
    assert [v.name for v in reg.list("audio_service")] == ["audio_service/v1"]  # ... but is not a version
    assert reg.get("audio_service", "latest").number == 1
    with pytest.raises(RegistryError):
        reg.get("audio_service", 2)

    # The next writer (lock now free: the kernel dropped the dead holder's flock) cleans up.
    second = tmp_path / "second"
    second.mkdir()
    (second / "weights.bin").write_bytes(b"second")
    result = reg.register("audio_service", second, lineage=_lineage(), metrics={}, promote_rule="never")
    assert result.version.number == 2
    assert not [p for p in mdir.iterdir() if p.name.endswith(".partial")]
    reg.verify("audio_service", 2)
