"""Locks that hold on NFS: lock files opened read-write and locked with fcntl.lockf.

On NFS the kernel turns flock() into a POSIX byte-range lock, which for an exclusive lock needs
a descriptor open for writing; `nfs_flock` below makes flock behave that way here, so code that
would fail with EBADF on an NFS volume fails the same way in these tests.
"""
import errno
import fcntl
import multiprocessing as mp
import os
import signal
import threading
import time

import pytest
import torch

from unified_pipeline.file_lock import FileLock
from unified_pipeline.training import checkpoints as ck


@pytest.fixture
def nfs_flock(monkeypatch):
    """flock as an NFS client performs it: a POSIX lock of the whole file."""
    lockf = fcntl.lockf
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: lockf(fd, op))


def test_the_emulation_fails_as_nfs_does_on_a_read_only_descriptor(nfs_flock, tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)  # how the checkpoint folder used to be locked
    try:
        with pytest.raises(OSError) as err:
            fcntl.flock(fd, fcntl.LOCK_EX)
        assert err.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_checkpoint_save_resume_and_prune_work_on_nfs(nfs_flock, tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "loop": {"epoch": 1}}
    ck.save_checkpoint(tmp_path, 1, 0, state)
    ck.save_checkpoint(tmp_path, 2, 0, state)
    assert ck.latest_valid(tmp_path).epoch == 2
    assert [p.name for p in ck.prune(tmp_path, keep_last=1, current=(2, 0), best_epoch=None)] == ["ckpt-epoch0001"]
    assert (tmp_path / ck.LOCK_FILE).is_file()


def _hold(path, ready, release):
    with FileLock(path):
        ready.set()
        release.wait(30)


def test_another_process_is_excluded_until_release(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    path = tmp_path / "x.lock"
    proc = ctx.Process(target=_hold, args=(str(path), ready, release))
    proc.start()
    try:
        assert ready.wait(60)
        assert not FileLock(path).acquire(blocking=False)
        assert not FileLock(path).acquire(timeout_s=0.2)
        release.set()
        proc.join(30)
        lock = FileLock(path)
        assert lock.acquire(timeout_s=10)
        lock.release()
    finally:
        release.set()
        proc.join(30)


def test_a_killed_holder_frees_the_lock(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    path = tmp_path / "x.lock"
    proc = ctx.Process(target=_hold, args=(str(path), ready, release))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    lock = FileLock(path)
    assert lock.acquire(timeout_s=10)
    lock.release()


def test_same_process_holders_exclude_each_other_and_a_failed_try_keeps_the_lock(tmp_path):
    """POSIX locks belong to the process: without the in-process lock, a second FileLock would
    succeed, and closing its descriptor would silently drop the first holder's lock."""
    ctx = mp.get_context("spawn")
    path = tmp_path / "x.lock"
    first = FileLock(path)
    assert first.acquire()
    assert not FileLock(path).acquire(blocking=False)
    # Still held as far as other processes can tell.
    probe = ctx.Process(target=_try_once, args=(str(path),))
    probe.start()
    probe.join(60)
    assert probe.exitcode == 3
    first.release()
    assert FileLock(path).acquire(blocking=False)


def _try_once(path):
    lock = FileLock(path)
    os._exit(0 if lock.acquire(blocking=False) else 3)


def test_threads_wait_for_each_other(tmp_path):
    path, inside, overlaps = tmp_path / "x.lock", [], []

    def work():
        with FileLock(path):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps == [1, 1, 1, 1]
