"""The local cluster's parts: Redis (broker and results), PostgreSQL (Dagster's instance), workers.

Everything comes from Debian packages (redis-server, postgresql) and the project's virtualenv.
PostgreSQL refuses to run as root; started by root it runs as the `postgres` user that the
Debian package creates.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from unified_pipeline.cluster.processes import ClusterError, Proc, spawn, wait_until

APT_HINT = "install the Debian packages: apt-get install redis-server postgresql"


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ClusterError(f"redis: redis-server is not installed; {APT_HINT}")
    return found


def postgres_bindir() -> Path:
    """Debian keeps the server programs off PATH, under /usr/lib/postgresql/<major>/bin."""
    on_path = shutil.which("postgres")
    candidates = ([Path(on_path).parent] if on_path else []) + [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)]
    for d in candidates:
        if (d / "postgres").exists() and (d / "initdb").exists():
            return d
    raise ClusterError(f"postgres: the PostgreSQL server (postgres, initdb) is not installed; {APT_HINT}")


def _major(path: str) -> int:
    part = Path(path).parent.name
    return int(part) if part.isdigit() else 0


def start_redis(state: Path, port: int) -> Proc:
    data = state / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = spawn("redis", [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(data), "--daemonize", "no", "--logfile", ""],
                 state / "logs" / "redis.log", cwd=data)
    wait_until(proc, lambda: _redis_ping(port), "answering PING on port %d" % port, timeout_s=20)
    return proc


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError("postgres: running as root needs the `postgres` user of the Debian package; "
                           + APT_HINT) from None
    return "postgres"


def _check_reachable(user: str, folder: Path) -> None:
    """Every parent of the data folder must let the server user through."""
    entry = pwd.getpwnam(user)
    for parent in [folder, *folder.parents]:
        st = parent.stat()
        if st.st_uid == entry.pw_uid:
            continue
        if not st.st_mode & 0o001 and not (st.st_gid == entry.pw_gid and st.st_mode & 0o010):
            raise ClusterError(f"postgres: runs as user {user}, who cannot enter {parent}; make it traversable "
                               f"(chmod o+x) or put the cluster elsewhere with UNIFIED_CLUSTER_DIR")


def init_postgres(state: Path, username: str, password: str) -> Path:
    """A fresh data folder with one password-protected superuser; an existing one is kept."""
    pgdata = state / "postgres"
    if (pgdata / "PG_VERSION").exists():
        return pgdata
    bindir = postgres_bindir()
    user = _server_user()
    pgdata.mkdir(parents=True, exist_ok=True)
    pwfile = state / ".pg-init-password"
    pwfile.write_text(password + "\n")
    os.chmod(pwfile, 0o600)
    try:
        if user:
            _check_reachable(user, pgdata)
            shutil.chown(pgdata, user, user)
            shutil.chown(pwfile, user, user)
        log = state / "logs" / "postgres-initdb.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            try:
                subprocess.run([str(bindir / "initdb"), "-D", str(pgdata), "-U", username, f"--pwfile={pwfile}",
                                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"], stdin=subprocess.DEVNULL,
                               stdout=out, stderr=subprocess.STDOUT, cwd=pgdata, user=user, group=user,
                               timeout=180, check=True)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(pgdata, ignore_errors=True)  # a half-made folder would be taken for a cluster
                raise ClusterError(f"postgres: initdb failed ({exc}); log {log}") from None
    finally:
        pwfile.unlink(missing_ok=True)
    return pgdata


def start_postgres(state: Path, pgdata: Path, port: int, username: str, password: str, db: str) -> Proc:
    bindir = postgres_bindir()
    # TCP on loopback only; no Unix socket, whose path length limit long cluster folders would break.
    proc = spawn("postgres", [str(bindir / "postgres"), "-D", str(pgdata), "-p", str(port),
                              "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
                 state / "logs" / "postgres.log", cwd=pgdata, stop_signal=signal.SIGINT, user=_server_user())
    wait_until(proc, lambda: _connect(port, username, password, "postgres"), f"accepting connections on port {port}",
               timeout_s=60)
    _create_database(port, username, password, db)
    return proc


def _connect(port: int, username: str, password: str, db: str):
    import psycopg2

    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=username, password=password, dbname=db,
                                connect_timeout=3)
    except psycopg2.OperationalError as exc:
        if "authentication failed" in str(exc):
            raise ClusterError(f"postgres: password authentication failed for user {username}: the data folder was "
                               "made with another DAGSTER_PG_PASSWORD; use that one (see cluster.env) or remove the "
                               "folder's postgres/ to start afresh") from None
        raise
    conn.close()
    return True


def _create_database(port: int, username: str, password: str, db: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=username, password=password, dbname="postgres",
                            connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    finally:
        conn.close()


def start_worker(state: Path, queue: str, concurrency: int, celery_yaml: Path, env: dict[str, str]) -> Proc:
    """`dagster-celery worker start` for one queue, named `<queue>@<host>`, in the foreground of its own group."""
    bindir = str(Path(sys.executable).parent)  # dagster-celery runs `celery` from PATH
    env = {**env, "PATH": bindir + os.pathsep + env.get("PATH", os.defpath)}
    log = state / "logs" / f"worker-{queue}.log"
    proc = spawn(f"worker-{queue}", [sys.executable, "-m", "dagster_celery.cli", "worker", "start",
                                     "-A", "dagster_celery.app", "-y", str(celery_yaml), "-q", queue, "-n", queue,
                                     "-l", "INFO", "--", f"--concurrency={concurrency}", "--without-mingle",
                                     "--without-gossip"],
                 log, env=env, cwd=Path.cwd())
    size = Path(log).stat().st_size  # the log may hold earlier runs: look at what this one writes
    wait_until(proc, lambda: _ready_line(Path(log), size, queue), f"ready on queue {queue}", timeout_s=180, poll_s=0.5)
    return proc


def _ready_line(log: Path, offset: int, queue: str) -> bool:
    with open(log, "rb") as fh:
        fh.seek(offset)
        new = fh.read()
    return f"{queue}@".encode() in new and b" ready." in new
