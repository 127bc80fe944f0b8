"""Rerunning a failed run so that its model steps continue from their newest checkpoints.

Checkpoints live under $UNIFIED_HOME/checkpoints/<model>/<fingerprint>, and the fingerprint
depends only on the inputs and settings, so resuming means launching the same job (or, for a
run started from the UI, the same asset selection) with the same run config.
"""
from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unified_pipeline import atomic
from unified_pipeline.errors import ConfigError
from unified_pipeline.paths import unified_home

DEFS_MODULE = "unified_pipeline.definitions"
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def reports_dir() -> Path:
    return unified_home() / "reports"


def check_run_id(run_id: str) -> str:
    """Run ids become file names; refuse anything that could point outside the reports folder."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ConfigError(f"invalid run id {run_id!r}: use the id (or its first characters) shown by Dagster",
                          hint="letters, digits, '-' and '_' only")
    return run_id


@dataclass(frozen=True)
class RunSpec:
    """What a rerun needs: the job, the asset selection of an asset job, the run config file."""

    run_id: str
    job: str
    assets: tuple[str, ...] = field(default_factory=tuple)
    config_file: str | None = None

    @property
    def is_asset_job(self) -> bool:
        # Names starting with "__" are reserved for Dagster's implicit asset jobs ("__ASSET_JOB..."),
        # which is what a materialisation launched from the UI runs; they cannot be named on the CLI.
        return self.job.startswith("__")

    def dagster_args(self) -> list[str]:
        """Arguments of the `dagster` command that reruns this run."""
        if self.is_asset_job:
            if not self.assets:
                raise ConfigError(f"run {self.run_id} ran {self.job} but its asset selection is unknown",
                                  hint="materialise the same assets again from the UI")
            args = ["asset", "materialize", "-m", DEFS_MODULE, "--select", ",".join(self.assets)]
        else:
            args = ["job", "execute", "-m", DEFS_MODULE, "-j", self.job]
        if self.config_file:
            args += ["-c", self.config_file]
        return args

    def command(self) -> str:
        return shlex.join(["dagster", *self.dagster_args()])


def run_config_path(run_id: str) -> Path:
    return reports_dir() / f"{check_run_id(run_id)}-run-config.yaml"


def spec_from_run(run: Any) -> RunSpec:
    """From a DagsterRun; its run config (if any) is written next to the reports for `-c`."""
    import yaml

    config_file = None
    if run.run_config:
        config_file = str(atomic.write_text(run_config_path(run.run_id), yaml.safe_dump(dict(run.run_config), sort_keys=True)))
    assets = tuple(sorted(k.to_user_string() for k in (run.asset_selection or ())))
    return RunSpec(run.run_id, run.job_name, assets, config_file)


def lookup_run(run_id: str) -> Any:
    """The DagsterRun with this id in the CLI's Dagster instance, or None."""
    from unified_pipeline.dagster_home import open_instance

    with open_instance() as instance:
        return instance.get_run_by_id(run_id) if instance is not None else None


def record_failure(spec: RunSpec, model: str, report: Path, checkpoint: Path | None) -> Path:
    """A machine-readable twin of the Markdown error report; `train --resume` reads it."""
    data = {**asdict(spec), "model": model, "report": str(report), "checkpoint": str(checkpoint or ""),
            "failed_at": time.time()}
    return atomic.write_json(reports_dir() / f"{spec.run_id}-{model}-error.json", data)


def _failures() -> list[dict[str, Any]]:
    out = []
    for path in reports_dir().glob("*-error.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("run_id") and data.get("job"):
            out.append(data)
    return sorted(out, key=lambda d: float(d.get("failed_at") or 0.0))


def died(instance: Any, run_id: str) -> bool:
    """A run Dagster still calls STARTED whose processes are gone (SIGKILL, OOM, a closed laptop):
    every process that wrote an event for it has exited."""
    pids = {e.dagster_event.pid for e in instance.all_logs(run_id)
            if e.dagster_event is not None and e.dagster_event.pid}
    from unified_pipeline.progress import pid_alive

    return not any(pid_alive(int(p)) for p in pids)


def stored_failures(limit: int = 50) -> list[tuple[float, Any]]:
    """(time, DagsterRun) of the instance's failed, canceled and died runs, oldest first.

    The error reports above only exist when a step could still write one; a killed step or run
    leaves nothing but Dagster's own run storage."""
    from dagster import DagsterRunStatus, RunsFilter

    from unified_pipeline.dagster_home import open_instance

    statuses = [DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED, DagsterRunStatus.STARTED]
    out = []
    with open_instance() as instance:
        if instance is None:
            return []
        for record in instance.get_run_records(filters=RunsFilter(statuses=statuses), limit=limit):
            run = record.dagster_run
            if run.status == DagsterRunStatus.STARTED and not died(instance, run.run_id):
                continue
            out.append((record.update_timestamp.timestamp(), run))
    return sorted(out, key=lambda t: t[0])


def failed_run(run_id: str | None = None) -> RunSpec:
    """The newest failed run (or the one whose id starts with `run_id`) as a RunSpec: from the
    error reports, else from Dagster's run storage (failed, canceled, or died while running)."""
    if run_id:
        check_run_id(run_id)
    reports = [d for d in _failures() if not run_id or d["run_id"].startswith(run_id)]
    stored = [(t, r) for t, r in stored_failures() if not run_id or r.run_id.startswith(run_id)]
    candidates = {d["run_id"]: (float(d.get("failed_at") or 0.0), d) for d in reports}
    for t, run in stored:
        if run.run_id not in candidates or candidates[run.run_id][0] < t:
            candidates[run.run_id] = (t, run)
    if run_id and len(candidates) > 1:
        raise ConfigError(f"run id {run_id!r} is ambiguous: {sorted(candidates)}", hint="give more characters")
    if not candidates:
        if run_id:
            run = lookup_run(run_id)  # a full id of a run that Dagster does not call failed
            if run is not None:
                return spec_from_run(run)
            raise ConfigError(f"no failed run {run_id!r} in {reports_dir()} nor in the Dagster instance",
                              hint="give the run id shown by Dagster, or leave it out to resume the newest failure")
        raise ConfigError(f"no failed run recorded in {reports_dir()} nor in the Dagster instance",
                          hint="nothing to resume")
    _, newest = max(candidates.values(), key=lambda c: c[0])
    if not isinstance(newest, dict):
        return spec_from_run(newest)
    if str(newest["job"]).startswith("__") and not newest.get("assets"):
        run = lookup_run(newest["run_id"])  # the report was written without the run's selection
        if run is not None:
            return spec_from_run(run)
    config_file = newest.get("config_file") or None
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"run {newest['run_id']}: its run config {config_file} is gone",
                          hint="rerun the job with the same -c file by hand")
    return RunSpec(newest["run_id"], newest["job"], tuple(newest.get("assets") or ()), config_file)
