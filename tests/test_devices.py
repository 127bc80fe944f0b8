import multiprocessing as mp
import time

import pytest

from unified_pipeline import devices


@pytest.fixture
def fake_gpus(monkeypatch):
    def setup(gpus, slots):
        monkeypatch.setenv("UNIFIED_GPUS", str(gpus))
        monkeypatch.setenv("UNIFIED_SLOTS_PER_GPU", str(slots))
        devices.gpu_count.cache_clear()

    yield setup
    devices.gpu_count.cache_clear()


def test_inventory_from_environment(fake_gpus):
    fake_gpus(2, 3)
    assert devices.gpu_count() == 2 and devices.total_slots() == 6


def test_no_gpu_means_cpu_slots(fake_gpus, monkeypatch):
    fake_gpus(0, 4)
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 8)
    monkeypatch.setenv("UNIFIED_THREADS_PER_STEP", "2")
    assert devices.total_slots() == 4
    assert devices.threads_per_step() == 2


def test_leases_spread_over_gpus_and_never_exceed_slots(fake_gpus, tmp_path):
    fake_gpus(2, 1)
    with devices.lease(tmp_path) as a, devices.lease(tmp_path) as b:
        assert {a.device, b.device} == {"cuda:0", "cuda:1"}
        with pytest.raises(TimeoutError):
            with devices.lease(tmp_path, poll_s=0.05, timeout_s=0.2):
                pass


def _hold(lock_dir, gpus, slots, q):
    import os

    os.environ["UNIFIED_GPUS"] = str(gpus)
    os.environ["UNIFIED_SLOTS_PER_GPU"] = str(slots)
    devices.gpu_count.cache_clear()
    with devices.lease(lock_dir, poll_s=0.02) as lease:
        q.put(("start", lease.device, time.monotonic()))
        time.sleep(0.3)
        q.put(("end", lease.device, time.monotonic()))


def test_parallel_processes_respect_per_gpu_slot_limit(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), 2, 1, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    events = sorted([q.get() for _ in range(8)], key=lambda e: e[2])
    busy: dict[str, int] = {}
    for kind, dev, _ in events:
        busy[dev] = busy.get(dev, 0) + (1 if kind == "start" else -1)
        assert busy[dev] <= 1, f"{dev} had two steps at once"
    assert {dev for _, dev, _ in events} == {"cuda:0", "cuda:1"}


def test_slots_per_gpu_come_from_the_preset_unless_the_environment_says(monkeypatch, tmp_path):
    import json

    preset = json.loads(open("presets/training_preset.json").read())
    preset["hardware_configuration"]["slots_per_gpu"] = 2
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    monkeypatch.setenv("UNIFIED_GPUS", "3")
    monkeypatch.delenv("UNIFIED_SLOTS_PER_GPU", raising=False)
    devices.gpu_count.cache_clear()
    devices._preset_slots_per_gpu.cache_clear()
    try:
        assert devices.total_slots() == 6
        monkeypatch.setenv("UNIFIED_SLOTS_PER_GPU", "1")
        assert devices.total_slots() == 3
    finally:
        devices.gpu_count.cache_clear()
        devices._preset_slots_per_gpu.cache_clear()
