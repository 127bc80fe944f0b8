"""The one place that decides devices: GPU inventory, step slots and CPU threads.

Model steps carry the op tag `unified/device=accelerator`; the executor allows at most
`total_slots()` of them at once. Inside a step, `lease()` takes one concrete slot with an
exclusive file lock, picking the GPU with the most free slots, so parallel steps spread over
GPUs and never exceed `slots_per_gpu` on any of them. Without GPUs the slots are CPU slots and
each step gets its share of the cores as torch threads.

The inventory is read without importing torch (definitions must import fast):
`UNIFIED_GPUS` (a count, for tests and for pinning), else `nvidia-smi -L`, else none. Cores
are the ones this process may use: its CPU affinity, capped by the cgroup CPU quota that a
container (a Kubernetes pod's `limits.cpu`) runs under.

Under the Kubernetes executor (`UNIFIED_EXECUTOR=k8s`) every model step is its own pod and the
cluster scheduler hands each pod its GPU: there is no local slot to lease (every pod sees its
GPU as cuda:0, and slot files on the shared volume would make pods on different GPUs wait for
each other), the step uses all of its pod's CPU quota, and the executor's limit on parallel
model steps comes from the preset (`hardware_configuration.cluster_gpus`) or the run config,
not from the hardware of the pod that loads the code.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from unified_pipeline.file_lock import FileLock
from unified_pipeline.k8s import gpus_per_step, use_k8s

DEVICE_TAG = "unified/device"
DEVICE_TAG_VALUE = "accelerator"
# Read by cgroup_cpu_limit(); tests point it at a fake tree.
CGROUP_ROOT = Path("/sys/fs/cgroup")


@lru_cache(maxsize=1)
def gpu_count() -> int:
    env = os.environ.get("UNIFIED_GPUS")
    if env is not None and env.strip() != "":
        return max(0, int(env))
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def slots_per_gpu() -> int:
    """`UNIFIED_SLOTS_PER_GPU`, else the preset's hardware_configuration.slots_per_gpu."""
    env = os.environ.get("UNIFIED_SLOTS_PER_GPU")
    if env is not None and env.strip() != "":
        return max(1, int(env))
    return preset_slots_per_gpu()


@lru_cache(maxsize=1)
def preset_slots_per_gpu() -> int:
    return _preset_hardware().slots_per_gpu


def _preset_hardware():
    from unified_pipeline.presets import load_preset

    return load_preset().hardware_configuration


def cgroup_cpu_limit(root: Path | None = None) -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), None if unlimited."""
    root = Path(root or CGROUP_ROOT)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cpus() -> int:
    """Cores this process may keep busy: its affinity, capped by the container's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    cores = min(cores, os.cpu_count() or cores)
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def cpu_slots() -> int:
    """Parallel CPU training steps: one per `UNIFIED_THREADS_PER_STEP` cores (default 1)."""
    per_step = max(1, int(os.environ.get("UNIFIED_THREADS_PER_STEP", "1")))
    return max(1, available_cpus() // per_step)


def k8s_model_steps() -> int:
    """Model pods at once on Kubernetes: the preset's cluster GPUs over the GPUs each step asks for."""
    return max(1, _preset_hardware().cluster_gpus // gpus_per_step())


def total_slots() -> int:
    if use_k8s():
        return k8s_model_steps()
    gpus = gpu_count()
    return gpus * slots_per_gpu() if gpus else cpu_slots()


def threads_per_step() -> int:
    """torch intra-op threads for a step so that parallel steps do not oversubscribe the cores."""
    cores = available_cpus()
    if use_k8s():  # one step per pod: the quota is all its own
        return cores
    return max(1, cores // min(total_slots(), cores))


@dataclass(frozen=True)
class Lease:
    device: str  # "cuda:0" or "cpu"
    slot: int
    threads: int


def _slot_order() -> list[tuple[int | None, int]]:
    gpus = gpu_count()
    if not gpus:
        return [(None, s) for s in range(cpu_slots())]
    # Slot-major order fills slot 0 of every GPU before slot 1 of any: spreads load.
    return [(g, s) for s in range(slots_per_gpu()) for g in range(gpus)]


@contextlib.contextmanager
def lease(lock_dir: Path, poll_s: float = 0.5, timeout_s: float | None = None) -> Iterator[Lease]:
    """Hold one device slot for the duration of a training step; the step's current CUDA
    device is the leased one, so whatever uses the current device (pinned host memory of a
    DataLoader, new CUDA tensors without a device) lands on it rather than on GPU 0."""
    if use_k8s():
        # The scheduler gave this pod its GPU (or none); nothing on the shared volume to lease.
        device = "cuda:0" if gpu_count() else "cpu"
        yield _start(device, slot=0)
        return
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        for gpu, slot in _slot_order():
            name = f"gpu{gpu}-slot{slot}.lock" if gpu is not None else f"cpu-slot{slot}.lock"
            lock = FileLock(lock_dir / name)
            if not lock.acquire(blocking=False):
                continue
            try:
                yield _start(f"cuda:{gpu}" if gpu is not None else "cpu", slot)
                return
            finally:
                lock.release()
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no free device slot in {lock_dir} after {timeout_s}s")
        time.sleep(poll_s)


def _start(device: str, slot: int) -> Lease:
    threads = threads_per_step()
    _apply_threads(threads)
    bind_device(device)
    return Lease(device=device, slot=slot, threads=threads)


def _apply_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def bind_device(device: str) -> None:
    """Make a leased `cuda:k` the current CUDA device (a no-op for CPU, and for a GPU that this
    process cannot see, as with a pretend inventory from `UNIFIED_GPUS`)."""
    if not device.startswith("cuda"):
        return
    import torch

    index = int(device.partition(":")[2] or 0)
    if torch.cuda.is_available() and index < torch.cuda.device_count():
        torch.cuda.set_device(index)
