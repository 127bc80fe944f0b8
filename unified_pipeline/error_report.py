"""When a training step fails: a Markdown report with the traceback, the newest checkpoint and
the exact command that resumes it (rerunning the same job continues from that checkpoint)."""
from __future__ import annotations

import time
import traceback
from pathlib import Path

from unified_pipeline import atomic
from unified_pipeline.paths import unified_home


def newest_checkpoint(model: str) -> Path | None:
    root = unified_home() / "checkpoints" / model
    found = [p for p in root.glob("*/ckpt-*") if (p / "manifest.json").exists()] if root.exists() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def write_error_report(model: str, run_id: str, job: str, exc: BaseException) -> Path:
    ckpt = newest_checkpoint(model)
    resume = f"dagster job execute -m unified_pipeline.definitions -j {job}"
    text = "\n".join([
        f"# {model} failed in run {run_id}",
        "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- error: `{type(exc).__name__}: {exc}`",
        f"- newest checkpoint: `{ckpt}`" if ckpt else "- newest checkpoint: none (the rerun starts from scratch)",
        f"- resume: `{resume}` (same data and settings resume from that checkpoint)",
        "",
        "```",
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(),
        "```",
        "",
    ])
    return atomic.write_text(unified_home() / "reports" / f"{run_id or 'local'}-{model}-error.md", text)
