"""Model card: a plain-text page that says what a version is and how to use it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unified_pipeline.registry.compare import flatten
from unified_pipeline.registry.evidence import lines as evidence_lines
from unified_pipeline.registry.versions import Version


def _config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def render_card(v: Version) -> str:
    cfg = _config(v.path)
    lin = v.lineage
    lines = [f"{v.name}" + (f"  [{', '.join(v.aliases)}]" if v.aliases else ""), "=" * len(v.name), ""]
    lines.append(f"created     {v.created_at}")
    lines.append(f"tag         {v.tag or '-'}")
    lines.append(f"fingerprint {v.fingerprint or '-'}")
    lines.append(f"folder      {v.path}")
    lines.append(f"files       {len(v.files)} ({_size(v.size)}, sha256 recorded for each)")
    lines += ["", "What it is"]
    if cfg:
        lines.append(f"  architecture {cfg.get('architecture', '?')} ({cfg.get('module', '?')})")
        for key, value in flatten(cfg.get("config", {})).items():
            lines.append(f"    {key} = {json.dumps(value, default=str)}")
        classes = (cfg.get("extra") or {}).get("classes")
        if classes:
            lines.append(f"  classes      {', '.join(map(str, classes))}")
    else:
        lines.append("  (no config.json)")
    lines += ["", "Data"]
    for ds, ver in sorted((lin.get("data_versions") or {}).items()):
        lines.append(f"  {ds}: {ver}")
    lines += ["", "Training"]
    for key in ("scenario", "preset", "code_version", "parent", "warm_start", "upstream", "run_id", "seed",
                "seeds", "device", "lock_sha256", "wall_time_s", "resumed_from"):
        if lin.get(key) not in (None, "", {}):
            lines.append(f"  {key:<12} {json.dumps(lin[key], default=str) if isinstance(lin[key], dict) else lin[key]}")
    for key, value in flatten(lin.get("hparams") or {}).items():
        lines.append(f"  hparam       {key} = {json.dumps(value, default=str)}")
    lines += ["", "Evidence for production"] + evidence_lines(lin.get("evidence"))
    cost = lin.get("cost") or {}
    if cost:
        lines += ["", "Cost (all attempts)"]
        lines += [f"  {k:<16} {cost[k]}" for k in ("wall_s", "cpu_s", "gpu_s", "peak_rss_mb", "peak_gpu_mem_mb",
                                                   "samples", "attempts") if k in cost]
    for p in lin.get("preemptions") or []:
        lines.append(f"  preempted by {p.get('signal')} at epoch {p.get('epoch')} step {p.get('step')}; "
                     f"resumed from {p.get('checkpoint')}")
    lines += ["", "Metrics"]
    flat = flatten(v.metrics)
    width = max((len(k) for k in flat), default=0)
    for key, value in flat.items():
        shown = f"{value:.6g}" if isinstance(value, float) else json.dumps(value, default=str)
        lines.append(f"  {key:<{width}}  {shown}")
    if not flat:
        lines.append("  (none recorded)")
    plots = sorted(k for k in v.files if k.startswith("plots/") and k.endswith(".png"))
    lines += ["", "Plots"] + ([f"  {v.path / p}" for p in plots] or ["  (none)"])
    lines += [
        "",
        "Load in Python",
        "  from unified_pipeline.models.base import BaseModel",
        "  from unified_pipeline.registry import ModelRegistry",
        f"  folder = ModelRegistry().model_dir({v.model!r}, 'v{v.number}')  # checks every sha256 first",
        "  model = BaseModel.load(folder)",
    ]
    return "\n".join(lines)
