"""Per-model exclusive lock: one registry writer per model at a time, across processes.

A POSIX lock on the model's lock file (file_lock.py), which holds on NFS as on a local disk;
the kernel releases it when a holder dies (even by SIGKILL), so a crashed registration never
blocks the next one.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from unified_pipeline.errors import PipelineError
from unified_pipeline.file_lock import FileLock

LOCK_FILE = ".lock"


class RegistryBusy(PipelineError):
    """Another process held a model's registry lock for longer than the timeout."""


@contextlib.contextmanager
def model_lock(model_dir: Path, timeout_s: float = 600.0) -> Iterator[None]:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / LOCK_FILE
    lock = FileLock(path)
    if not lock.acquire(timeout_s=timeout_s, poll_s=0.02):
        raise RegistryBusy(f"registry lock {path} still held after {timeout_s:.0f} s")
    try:
        yield
    finally:
        lock.release()
