"""Preemption as an outcome: a model step stopped by SIGTERM/SIGINT is retried, not failed.

The Trainer turns the signal into a checkpoint at the next step boundary and raises
`TrainingInterrupted`. `train_or_reuse` then records the preemption here and raises
`StepPreempted`, an ordinary exception that the model asset's Dagster `RetryPolicy` retries;
every other error bypasses that policy (`Failure(allow_retries=False)`), so a bad setting is
not retried. The retry computes the same fingerprint, finds the checkpoint folder and resumes.

Records live in `<home>/preemptions/<model>/<fingerprint[:16]>.json` (one list per training
line) until the version registers; they then go into its lineage as `preemptions`, together
with the cost of the attempts the preemptions cut short (registry/costs.py adds them up).
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from unified_pipeline import atomic
from unified_pipeline.errors import PipelineError
from unified_pipeline.paths import unified_home

PREEMPTED = "preempted"


class StepPreempted(PipelineError):
    """Training stopped on a signal after writing a checkpoint; a retry resumes from it."""

    def __init__(self, model: str, record: dict[str, Any]):
        where = record.get("checkpoint") or "no new checkpoint (the previous one stays valid)"
        super().__init__(f"{model}: preempted by {record.get('signal')} at epoch {record.get('epoch')} "
                         f"step {record.get('step')}; checkpoint: {where}",
                         hint="the step is retried and resumes from its newest checkpoint")
        self.model = model
        self.record = record


def records_path(model: str, fingerprint: str) -> Path:
    return unified_home() / "preemptions" / model / f"{fingerprint[:16]}.json"


def read_records(model: str, fingerprint: str) -> list[dict[str, Any]]:
    path = records_path(model, fingerprint)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def record(model: str, fingerprint: str, exc: BaseException, *, run_id: str, attempt_cost: dict[str, Any]) -> dict:
    """Append one preemption (signal, checkpoint reached, run, cost of the cut-short attempt)."""
    from unified_pipeline.training import checkpoints as ckpt

    signum = getattr(exc, "signum", None)
    checkpoint = getattr(exc, "checkpoint", None)
    epoch = step = None
    if checkpoint is not None:
        epoch, step = ckpt.parse_name(Path(checkpoint).name) or (None, None)
    entry = {
        "at": time.time(),
        "signal": signal.Signals(signum).name if signum else type(exc).__name__,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "epoch": epoch,  # completed epochs in that checkpoint
        "step": step,  # steps into the next epoch
        "run_id": run_id,
        "cost": attempt_cost,
    }
    records = read_records(model, fingerprint) + [entry]
    try:
        atomic.write_json(records_path(model, fingerprint), records)
    except OSError:  # the checkpoint matters, the note about it does not
        pass
    return entry


def clear(model: str, fingerprint: str) -> None:
    records_path(model, fingerprint).unlink(missing_ok=True)


def is_preemption(exc: BaseException) -> bool:
    """The trainer's signal exit (TrainingInterrupted, a KeyboardInterrupt), or a second signal during its save."""
    from unified_pipeline.training.trainer import TrainingInterrupted

    return isinstance(exc, TrainingInterrupted)


def retry_policy(retries: int, delay_s: float):
    """Dagster RetryPolicy for model steps: `retries` attempts, exponential backoff from `delay_s`."""
    from dagster import Backoff, RetryPolicy

    if not delay_s:
        return RetryPolicy(max_retries=int(retries))
    return RetryPolicy(max_retries=int(retries), delay=float(delay_s), backoff=Backoff.EXPONENTIAL)
