"""Shared pieces of the benchmarks: machine description, result files, the Markdown table."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from unified_pipeline import atomic

ROOT = Path(__file__).resolve().parent.parent
# A dry run of a device script points these elsewhere so that CPU figures never land in the GPU sections.
RESULTS = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results")
DOC = Path(os.environ.get("BENCH_DOC") or ROOT / "docs" / "benchmarks.md")


def machine() -> str:
    gpu = ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        gpu = f", GPU: {out.splitlines()[0]}" if out else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{_cpu_model()}, {os.cpu_count()} cores{gpu}"


def _cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is often empty or just the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save(section: str, rows: list[dict], notes: str = "") -> Path:
    """Store one section's rows as JSON and rewrite that section of docs/benchmarks.md."""
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    record = {"section": section, "machine": machine(), "when": stamp, "rows": rows, "notes": notes}
    path = atomic.write_json(RESULTS / f"{section}-{stamp}.json", record)
    _update_doc(record)
    return path


def table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return "" if v is None else str(v)


def _update_doc(record: dict) -> None:
    begin, end = f"<!-- {record['section']}:begin -->", f"<!-- {record['section']}:end -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nWritten by `make bench` (`python -m bench.run`).\n"
    block = (f"{begin}\n## {record['section']}\n\nMachine: {record['machine']}; measured {record['when']}.\n\n"
             f"{table(record['rows'])}\n{record['notes']}\n{end}")
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic.write_text(DOC, text)
    print(table(record["rows"]))
