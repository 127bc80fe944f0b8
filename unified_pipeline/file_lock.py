"""Exclusive locks on lock files that hold on a local disk and on NFS alike.

The shared run root may be an NFS ReadWriteMany volume (docs/kubernetes.md). There `flock` is
emulated with POSIX byte-range locks, which need a file opened for writing: an exclusive
`flock` on a read-only descriptor (a directory, say) fails with EBADF. So every lock here is
`fcntl.lockf` on a lock file opened read-write. The kernel (or the NFS server, through the
client's lease) drops it when the holder dies, even by SIGKILL.

POSIX locks belong to the process, not to the descriptor: a second lock of the same file in
the same process would succeed, and closing any descriptor of the file would drop the lock.
A per-path lock inside the process comes first, so one process never opens a held lock file
twice and its threads exclude each other as other processes do.
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path

_registry_guard = threading.Lock()
_local: dict[str, threading.Lock] = {}


def _reset_after_fork() -> None:
    # A forked child holds none of its parent's locks (POSIX locks are not inherited).
    global _registry_guard, _local
    _registry_guard = threading.Lock()
    _local = {}


os.register_at_fork(after_in_child=_reset_after_fork)


def _local_lock(path: Path) -> threading.Lock:
    key = os.path.abspath(path)
    with _registry_guard:
        return _local.setdefault(key, threading.Lock())


class FileLock:
    """`with FileLock(path):` blocks until held; `acquire(blocking=False)` answers at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._local: threading.Lock | None = None

    def acquire(self, blocking: bool = True, timeout_s: float | None = None, poll_s: float = 0.05) -> bool:
        local = _local_lock(self.path)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not local.acquire(blocking=blocking, timeout=-1 if timeout_s is None or not blocking else timeout_s):
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except BaseException:
            local.release()
            raise
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | (0 if blocking and timeout_s is None else fcntl.LOCK_NB))
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if not blocking or (deadline is not None and time.monotonic() >= deadline):
                        os.close(fd)
                        local.release()
                        return False
                    time.sleep(poll_s)
        except BaseException:
            os.close(fd)
            local.release()
            raise
        self._fd, self._local = fd, local
        return True

    def release(self) -> None:
        fd, local = self._fd, self._local
        self._fd = self._local = None
        if fd is None:
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            local.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
