"""When a training step fails: a Markdown report with the traceback, the newest checkpoint and
the exact command that resumes it (rerunning the same selection with the same run config
continues from that checkpoint), plus a JSON twin that `unified-pipeline train --resume` reads."""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from unified_pipeline import atomic
from unified_pipeline.errors import PipelineError
from unified_pipeline.paths import unified_home
from unified_pipeline.resume import RunSpec, check_run_id, lookup_run, record_failure, reports_dir, spec_from_run


def newest_checkpoint(model: str) -> Path | None:
    root = unified_home() / "checkpoints" / model
    found = [p for p in root.glob("*/ckpt-*") if (p / "manifest.json").exists()] if root.exists() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _run_spec(run_id: str, job: str, run: Any) -> RunSpec:
    if run is None:
        try:  # the step's own instance ($DAGSTER_HOME) knows the selection and config of the run
            run = lookup_run(run_id)
        except Exception:  # noqa: BLE001 - a report without them beats no report
            run = None
    return spec_from_run(run) if run is not None else RunSpec(run_id, job)


def _resume_lines(spec: RunSpec) -> list[str]:
    try:
        command = f"`{spec.command()}`"
    except PipelineError as exc:
        command = f"not known ({exc})"
    lines = [f"- resume: {command} (same data and settings resume from that checkpoint)",
             f"- or: `unified-pipeline train --resume {spec.run_id}`"]
    if spec.config_file:
        lines.append(f"- run config: `{spec.config_file}`")
    return lines


def write_error_report(model: str, run_id: str, job: str, exc: BaseException, run: Any = None) -> Path:
    """`run` is the DagsterRun (context.run); without it the run is looked up in $DAGSTER_HOME."""
    run_id = check_run_id(run_id or "local")
    ckpt = newest_checkpoint(model)
    spec = _run_spec(run_id, job, run)
    text = "\n".join([
        f"# {model} failed in run {run_id}",
        "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- job: `{spec.job}`" + (f" (assets: {', '.join(spec.assets)})" if spec.assets else ""),
        f"- error: `{type(exc).__name__}: {exc}`",
        f"- newest checkpoint: `{ckpt}`" if ckpt else "- newest checkpoint: none (the rerun starts from scratch)",
        *_resume_lines(spec),
        "",
        "```",
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(),
        "```",
        "",
    ])
    report = atomic.write_text(reports_dir() / f"{run_id}-{model}-error.md", text)
    record_failure(spec, model, report, ckpt)
    return report
