"""Running the jobs on Celery workers through dagster-celery (extra `[celery]`).

With `UNIFIED_EXECUTOR=celery` every step becomes a task on a broker: model steps carry the op
tag `dagster-celery/queue=gpu` and go to workers started on GPU machines, every other step goes
to the default `cpu` queue. Workers and the process that launches the run must share
`UNIFIED_HOME` (a shared volume) and a Dagster instance on PostgreSQL (dagster.postgres.yaml).

Messages are acknowledged only after a step ends, and a message whose worker process died is put
back on its queue: a training killed mid-way (OOM killer, SIGKILL) runs again on a worker of the
same queue and continues from its newest checkpoint, because the checkpoint folder follows from
the step's fingerprint. A whole worker machine that vanishes hands its unacknowledged steps back
after the broker's visibility timeout (`UNIFIED_CELERY_VISIBILITY_TIMEOUT`, which must exceed the
longest step, or Redis hands a running step to a second worker).

Kept free of dagster-celery and celery imports so that definitions load without them.
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any

QUEUE_TAG = "dagster-celery/queue"  # dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_VISIBILITY_TIMEOUT_S = 12 * 3600


def use_celery() -> bool:
    return os.environ.get("UNIFIED_EXECUTOR", "").lower() == "celery"


def broker_url() -> str:
    return os.environ.get("UNIFIED_CELERY_BROKER") or DEFAULT_BROKER


def backend_url() -> str:
    """`UNIFIED_CELERY_BACKEND`, else database 1 of a Redis broker (results apart from messages)."""
    env = os.environ.get("UNIFIED_CELERY_BACKEND")
    if env:
        return env
    broker = broker_url()
    if broker.startswith(("redis://", "rediss://")):
        base, _, db = broker.rpartition("/")
        return f"{base}/1" if db.isdigit() and "//" in base else broker
    return "rpc://"


def executor_config() -> dict[str, Any]:
    """The celery_executor config; workers are started with the same block (cluster/ writes it)."""
    visibility = int(os.environ.get("UNIFIED_CELERY_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT_S))
    return {
        "broker": broker_url(),
        "backend": backend_url(),
        "config_source": {
            "task_default_queue": CPU_QUEUE,
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,  # a busy worker holds no queued step another could run
            # dagster-celery's defaults, plus the visibility timeout
            "broker_transport_options": {"max_retries": 3, "interval_start": 0, "interval_step": 0.2,
                                         "interval_max": 0.5, "visibility_timeout": visibility},
        },
    }


def celery_executor():
    try:
        from dagster_celery import celery_executor as executor
    except ImportError as exc:  # pragma: no cover - the extra is part of the lock
        raise RuntimeError("UNIFIED_EXECUTOR=celery needs dagster-celery: install the `celery` extra") from exc
    return executor.configured(executor_config(), name="celery")


def model_step_tags() -> dict[str, str]:
    return {QUEUE_TAG: GPU_QUEUE}


def worker_identity() -> dict[str, Any]:
    """Who ran this step: the Celery worker and the queue its message came from, else this host."""
    ident: dict[str, Any] = {"executor": "local", "hostname": socket.gethostname(), "pid": os.getpid()}
    if "celery" not in sys.modules:  # a step of the local executors never imports celery
        return ident
    from celery import current_task

    request = getattr(current_task, "request", None)
    if request is None or not getattr(request, "id", None):
        return ident
    delivery = getattr(request, "delivery_info", None) or {}
    routing_key = str(delivery.get("routing_key") or "")
    ident.update(
        executor="celery",
        worker=str(request.hostname or ""),
        queue=routing_key.split(".", 1)[0],
        task_id=str(request.id),
        redelivered=bool(delivery.get("redelivered", False)),
    )
    return ident
