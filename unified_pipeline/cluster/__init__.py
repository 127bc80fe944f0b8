"""A Celery cluster on this machine: `python -m unified_pipeline.cluster up|down|status|env`.

`up` starts redis-server (broker and results), PostgreSQL (Dagster's runs and events), one
worker on the `cpu` queue and one on the `gpu` queue, each with its own log under
`$UNIFIED_CLUSTER_DIR/logs` (default `$UNIFIED_HOME/cluster`). It writes there the instance
folder (`dagster_home/`, from dagster.postgres.yaml), the workers' executor config and
`cluster.env`, the variables that make a `dagster job execute` run through the cluster.
`down` stops every process `up` started and nothing else. Settings: UNIFIED_REDIS_PORT (6379),
DAGSTER_PG_PORT (5432), DAGSTER_PG_USERNAME (dagster), DAGSTER_PG_PASSWORD (made up once and
kept in cluster.env, readable by its owner only), DAGSTER_PG_DB (dagster),
UNIFIED_CPU_WORKER_CONCURRENCY (the core count); the gpu worker runs one step per device slot.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
from pathlib import Path

import yaml

from unified_pipeline import atomic, celery_mode, devices
from unified_pipeline.cluster import components
from unified_pipeline.cluster.processes import ClusterError, Proc, alive, is_ours, require_free_port, stop
from unified_pipeline.paths import project_root, unified_home

__all__ = ["ClusterError", "cluster_dir", "down", "read_env", "status", "up"]
STATE_FILE = "cluster.json"
ENV_FILE = "cluster.env"
# Variables a worker must share with the process that launches runs.
SHARED_VARS = ("UNIFIED_DATA", "UNIFIED_PRESET", "UNIFIED_ASSET_STORE", "UNIFIED_THREADS_PER_STEP",
               "UNIFIED_SLOTS_PER_GPU", "UNIFIED_GPUS", "GX_ANALYTICS_ENABLED", "PYTHONPATH")


def cluster_dir() -> Path:
    env = os.environ.get("UNIFIED_CLUSTER_DIR")
    return (Path(env) if env else unified_home() / "cluster").resolve()


def _load(state: Path) -> list[Proc]:
    try:
        return [Proc(**p) for p in json.loads((state / STATE_FILE).read_text())["processes"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"{state / STATE_FILE}: unreadable cluster state ({exc}); stop its processes by hand") from None


def _save(state: Path, procs: list[Proc]) -> None:
    atomic.write_json(state / STATE_FILE, {"processes": [p.to_json() for p in procs]})


def read_env(state: Path | None = None) -> dict[str, str]:
    """The variables in cluster.env (KEY=shell-quoted value per line)."""
    path = (state or cluster_dir()) / ENV_FILE
    out = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key] = shlex.split(value)[0] if value else ""
    return out


def _settings(state: Path) -> dict[str, str]:
    previous = read_env(state) if (state / ENV_FILE).exists() else {}
    # An existing database keeps the password it was made with.
    password = os.environ.get("DAGSTER_PG_PASSWORD") or previous.get("DAGSTER_PG_PASSWORD") or secrets.token_urlsafe(18)
    redis_port = int(os.environ.get("UNIFIED_REDIS_PORT", "6379"))
    env = {
        "UNIFIED_EXECUTOR": "celery",
        "UNIFIED_HOME": str(unified_home().resolve()),
        "UNIFIED_CELERY_BROKER": f"redis://127.0.0.1:{redis_port}/0",
        "UNIFIED_CELERY_BACKEND": f"redis://127.0.0.1:{redis_port}/1",
        "DAGSTER_HOME": str(state / "dagster_home"),
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": os.environ.get("DAGSTER_PG_PORT", "5432"),
        "DAGSTER_PG_USERNAME": os.environ.get("DAGSTER_PG_USERNAME", "dagster"),
        "DAGSTER_PG_PASSWORD": password,
        "DAGSTER_PG_DB": os.environ.get("DAGSTER_PG_DB", "dagster"),
    }
    env.update({k: os.environ[k] for k in SHARED_VARS if os.environ.get(k)})
    if "UNIFIED_CELERY_VISIBILITY_TIMEOUT" in os.environ:
        env["UNIFIED_CELERY_VISIBILITY_TIMEOUT"] = os.environ["UNIFIED_CELERY_VISIBILITY_TIMEOUT"]
    return env


def _write_config(state: Path, env: dict[str, str]) -> Path:
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    atomic.write_text(home / "dagster.yaml", (project_root() / "dagster.postgres.yaml").read_text())
    lines = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    env_path = atomic.write_text(state / ENV_FILE, "# set -a; . this file; set +a\n" + "\n".join(lines) + "\n")
    os.chmod(env_path, 0o600)  # holds the database password
    saved = dict(os.environ)
    try:
        os.environ.update(env)  # the executor config follows the cluster's broker
        config = {"execution": {"config": celery_mode.executor_config()}}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return atomic.write_text(state / "celery.yaml", yaml.safe_dump(config, sort_keys=True))


def up(log=print) -> dict[str, str]:
    """Start the cluster; on any failure stop what was started and raise ClusterError."""
    state = cluster_dir()
    state.mkdir(parents=True, exist_ok=True)
    running = [p for p in _load(state) if is_ours(p)]
    if running:
        raise ClusterError(f"a cluster already runs from {state} ({', '.join(p.name for p in running)}); "
                           "stop it first with `make cluster-down`")
    components.redis_binary()  # a missing package is reported before anything starts
    components.postgres_bindir()
    env = _settings(state)
    redis_port, pg_port = int(env["UNIFIED_CELERY_BROKER"].rsplit(":", 1)[1].split("/")[0]), int(env["DAGSTER_PG_PORT"])
    require_free_port("redis", redis_port, "UNIFIED_REDIS_PORT")
    require_free_port("postgres", pg_port, "DAGSTER_PG_PORT")
    celery_yaml = _write_config(state, env)
    procs: list[Proc] = []
    try:
        procs.append(components.start_redis(state, redis_port))
        _save(state, procs)
        log(f"redis: broker on 127.0.0.1:{redis_port}, log {procs[-1].log}")
        pgdata = components.init_postgres(state, env["DAGSTER_PG_USERNAME"], env["DAGSTER_PG_PASSWORD"])
        procs.append(components.start_postgres(state, pgdata, pg_port, env["DAGSTER_PG_USERNAME"],
                                               env["DAGSTER_PG_PASSWORD"], env["DAGSTER_PG_DB"]))
        _save(state, procs)
        log(f"postgres: database {env['DAGSTER_PG_DB']} on 127.0.0.1:{pg_port}, log {procs[-1].log}")
        worker_env = {**os.environ, **env}
        cpu_workers = int(os.environ.get("UNIFIED_CPU_WORKER_CONCURRENCY", os.cpu_count() or 1))
        for queue, concurrency in ((celery_mode.CPU_QUEUE, cpu_workers), (celery_mode.GPU_QUEUE, devices.total_slots())):
            procs.append(components.start_worker(state, queue, concurrency, celery_yaml, worker_env))
            _save(state, procs)
            log(f"worker {queue}: {concurrency} process(es), log {procs[-1].log}")
    except BaseException:
        for p in reversed(procs):
            stop(p)
        _save(state, [])
        raise
    log(f"cluster up; run through it with: set -a; . {state / ENV_FILE}; set +a")
    return env


def down(log=print) -> list[str]:
    state = cluster_dir()
    procs = _load(state)
    notes = []
    errors = []
    for p in reversed(procs):  # workers first: they finish their steps while the broker still answers
        try:
            notes.append(stop(p, grace_s=60 if p.name.startswith("worker") else 30))
        except ClusterError as exc:
            errors.append(str(exc))
    left = [p for p in procs if is_ours(p)]
    if procs:
        _save(state, left)
    for note in notes:
        log(note)
    if errors or left:
        raise ClusterError("; ".join(errors) or f"still running: {', '.join(p.name for p in left)}")
    return notes


def status() -> dict[str, bool]:
    return {p.name: alive(p) or is_ours(p) for p in _load(cluster_dir())}

