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


@pytest.fixture
def fake_cpus(monkeypatch, tmp_path):
    """A machine with `cores` cores and, when given, a cgroup v2 (or v1) CPU quota."""
    def setup(cores, quota=None, period=100000, v1=False):
        monkeypatch.setattr(devices.os, "cpu_count", lambda: cores)
        monkeypatch.setattr(devices.os, "sched_getaffinity", lambda _pid: set(range(cores)))
        root = tmp_path / "cgroup"
        root.mkdir(exist_ok=True)
        if v1:
            (root / "cpu").mkdir(exist_ok=True)
            (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota if quota else -1}\n")
            (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
        else:
            (root / "cpu.max").write_text(f"{quota or 'max'} {period}\n")
        monkeypatch.setattr(devices, "CGROUP_ROOT", root)

    return setup


def test_no_gpu_means_cpu_slots(fake_gpus, fake_cpus, monkeypatch):
    fake_gpus(0, 4)
    fake_cpus(8)
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
    devices.preset_slots_per_gpu.cache_clear()
    try:
        assert devices.total_slots() == 6
        monkeypatch.setenv("UNIFIED_SLOTS_PER_GPU", "1")
        assert devices.total_slots() == 3
    finally:
        devices.gpu_count.cache_clear()
        devices.preset_slots_per_gpu.cache_clear()


@pytest.mark.parametrize("v1", [False, True])
def test_container_cpu_quota_caps_cores(fake_gpus, fake_cpus, monkeypatch, v1):
    fake_gpus(0, 4)
    fake_cpus(64, quota=250000, period=100000, v1=v1)  # limits.cpu: 2.5 on a 64-core node
    assert devices.cgroup_cpu_limit() == 2.5
    assert devices.available_cpus() == 2
    monkeypatch.setenv("UNIFIED_THREADS_PER_STEP", "1")
    assert devices.total_slots() == 2 and devices.threads_per_step() == 1


def test_unlimited_cgroup_leaves_the_affinity(fake_cpus):
    fake_cpus(6)
    assert devices.cgroup_cpu_limit() is None and devices.available_cpus() == 6


def test_kubernetes_step_skips_slot_files_and_uses_its_whole_quota(fake_gpus, fake_cpus, monkeypatch, tmp_path):
    fake_gpus(1, 4)  # what a pod with one GPU sees
    fake_cpus(96, quota=400000)  # a 96-core node, limits.cpu: 4
    monkeypatch.setenv("UNIFIED_EXECUTOR", "k8s")
    lock_dir = tmp_path / "locks"
    # Two pods on different GPUs both see theirs as cuda:0; neither waits for the other.
    with devices.lease(lock_dir, timeout_s=0.1) as a, devices.lease(lock_dir, timeout_s=0.1) as b:
        assert a.device == b.device == "cuda:0"
        assert a.threads == 4
    assert not lock_dir.exists() or not any(lock_dir.iterdir())
    fake_gpus(0, 4)  # a data step's pod on a CPU node
    with devices.lease(lock_dir) as c:
        assert c.device == "cpu" and c.threads == 4


def test_kubernetes_limit_comes_from_the_preset_not_the_local_hardware(fake_gpus, monkeypatch, tmp_path):
    import json

    fake_gpus(0, 4)  # the code-location pod has no GPU
    preset = json.loads(open("presets/training_preset.json").read())
    preset["hardware_configuration"]["cluster_gpus"] = 12
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    monkeypatch.setenv("UNIFIED_PRESET", str(path))
    monkeypatch.setenv("UNIFIED_EXECUTOR", "k8s")
    assert devices.total_slots() == 12
    monkeypatch.setenv("UNIFIED_K8S_GPUS_PER_STEP", "2")
    assert devices.total_slots() == 6


def test_leased_gpu_becomes_the_current_cuda_device(fake_gpus, monkeypatch, tmp_path):
    import torch

    fake_gpus(2, 1)
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: current.append(i))
    with devices.lease(tmp_path) as a, devices.lease(tmp_path) as b:
        assert (a.device, b.device) == ("cuda:0", "cuda:1")
        assert current == [0, 1]


def test_pretend_gpus_are_not_bound(fake_gpus, monkeypatch, tmp_path):
    import torch

    fake_gpus(2, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device on a GPU torch cannot see"))
    with devices.lease(tmp_path) as a:
        assert a.device == "cuda:0"
