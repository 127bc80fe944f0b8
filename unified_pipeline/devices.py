"""The one place that decides devices: GPU inventory, step slots and CPU threads.

Model steps carry the op tag `unified/device=accelerator`; the executor allows at most
`total_slots()` of them at once. Inside a step, `lease()` takes one concrete slot with an
exclusive file lock, picking the GPU with the most free slots, so parallel steps spread over
GPUs and never exceed `slots_per_gpu` on any of them. Without GPUs the slots are CPU slots and
each step gets its share of the cores as torch threads.

The inventory is read without importing torch (definitions must import fast):
`UNIFIED_GPUS` (a count, for tests and for pinning), else `nvidia-smi -L`, else none.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

DEVICE_TAG = "unified/device"
DEVICE_TAG_VALUE = "accelerator"


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
    return _preset_slots_per_gpu()


@lru_cache(maxsize=1)
def _preset_slots_per_gpu() -> int:
    from unified_pipeline.presets import load_preset

    return load_preset().hardware_configuration.slots_per_gpu


def cpu_slots() -> int:
    """Parallel CPU training steps: one per `UNIFIED_THREADS_PER_STEP` cores (default 1)."""
    per_step = max(1, int(os.environ.get("UNIFIED_THREADS_PER_STEP", "1")))
    return max(1, (os.cpu_count() or 1) // per_step)


def total_slots() -> int:
    gpus = gpu_count()
    return gpus * slots_per_gpu() if gpus else cpu_slots()


def threads_per_step() -> int:
    """torch intra-op threads for a step so that parallel steps do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // min(total_slots(), os.cpu_count() or 1))


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
    """Hold one device slot for the duration of a training step."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        for gpu, slot in _slot_order():
            name = f"gpu{gpu}-slot{slot}.lock" if gpu is not None else f"cpu-slot{slot}.lock"
            fh = open(lock_dir / name, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                threads = threads_per_step()
                _apply_threads(threads)
                yield Lease(device=f"cuda:{gpu}" if gpu is not None else "cpu", slot=slot, threads=threads)
                return
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no free device slot in {lock_dir} after {timeout_s}s")
        time.sleep(poll_s)


def _apply_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
