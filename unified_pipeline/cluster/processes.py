"""Start, watch and stop the cluster's long-running processes without ever waiting forever.

Each component runs in its own session (so its process group holds it and every child it forks)
with stdout and stderr in its own log. The state file records the leader's pid with its start time
from /proc, so a later `down` stops exactly these processes and never a stranger that reused a pid.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence


class ClusterError(RuntimeError):
    """A component cannot start or stop; the message says which and why, in one line."""


@dataclass
class Proc:
    name: str
    pid: int
    start_time: str  # field 22 of /proc/<pid>/stat: tells a reused pid apart
    log: str
    stop_signal: int = int(signal.SIGTERM)

    def to_json(self) -> dict:
        return asdict(self)


def start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def require_free_port(component: str, port: int, env_var: str) -> None:
    if port_taken(port):
        raise ClusterError(f"{component}: port {port} on 127.0.0.1 is already taken by another program; "
                           f"stop it or choose another port with {env_var}=<port>")


def spawn(name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
          stop_signal: int = signal.SIGTERM, user: str | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=cwd, start_new_session=True, user=user, group=user)
        except OSError as exc:
            raise ClusterError(f"{name}: cannot run {args[0]}: {exc}") from exc
    return Proc(name=name, pid=proc.pid, start_time=start_time(proc.pid), log=str(log), stop_signal=int(stop_signal))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_ours(proc: Proc) -> bool:
    """The group still runs and its leader, if alive, is the process we started."""
    now = start_time(proc.pid)
    if now and now != proc.start_time:
        return False  # the pid belongs to someone else now
    return _group_alive(proc.pid)


def alive(proc: Proc) -> bool:
    return start_time(proc.pid) == proc.start_time and _reaped(proc.pid) is False


def _reaped(pid: int) -> bool:
    """Collect our own exited child (a zombie still has a /proc entry)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return Path(f"/proc/{pid}/stat").exists() and " Z " in Path(f"/proc/{pid}/stat").read_text()
    return done == pid


def log_tail(proc: Proc, lines: int = 5) -> str:
    try:
        text = Path(proc.log).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def wait_until(proc: Proc, ready: Callable[[], bool], what: str, timeout_s: float, poll_s: float = 0.2) -> None:
    """Until `ready()`; a process that exits, or a deadline that passes, is an error naming its log."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except ClusterError:  # ready() knows it never will be
            raise
        except Exception:  # not up yet: connection refused, file missing, ...
            pass
        if not alive(proc):
            raise ClusterError(f"{proc.name}: exited before {what}; log {proc.log}: {log_tail(proc)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{proc.name}: not {what} after {timeout_s:.0f} s; log {proc.log}: {log_tail(proc)}")
        time.sleep(poll_s)


def stop(proc: Proc, grace_s: float = 30.0) -> str:
    """Ask the process group to stop, then SIGKILL what is left after `grace_s`."""
    if not is_ours(proc):
        _reaped(proc.pid)
        return f"{proc.name}: not running"
    try:
        os.killpg(proc.pid, proc.stop_signal)
    except ProcessLookupError:
        return f"{proc.name}: not running"
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        _reaped(proc.pid)
        if not _group_alive(proc.pid):
            return f"{proc.name}: stopped"
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return f"{proc.name}: stopped"
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        _reaped(proc.pid)
        time.sleep(0.1)
    if _group_alive(proc.pid):
        raise ClusterError(f"{proc.name}: process group {proc.pid} survived SIGKILL")
    return f"{proc.name}: killed after {grace_s:.0f} s"
