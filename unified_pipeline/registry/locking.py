"""Per-model exclusive lock: one registry writer per model at a time, across processes.

`fcntl.flock` is tied to the open file, so the kernel releases it when a holder dies
(even by SIGKILL) and a crashed registration never blocks the next one.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from unified_pipeline.errors import PipelineError

LOCK_FILE = ".lock"


class RegistryBusy(PipelineError):
    """Another process held a model's registry lock for longer than the timeout."""


@contextlib.contextmanager
def model_lock(model_dir: Path, timeout_s: float = 600.0) -> Iterator[None]:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryBusy(f"registry lock {path} still held after {timeout_s:.0f} s") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
