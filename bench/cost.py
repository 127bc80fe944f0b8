"""Cost per point of each model's headline metric, from the cost every version records.

Runs collaborative_training once in a fresh run root (sample tensors copied in, as the parallel
section does), then reads each model's newest version: CPU seconds, GPU seconds, peak memory,
samples seen and monotonic wall time, summed over its attempts (training/cost.py), divided by
the headline test metric in points (percentage points for a metric in [0, 1] where higher is
better, else its absolute value).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import save
from bench.parallel import fresh_home, run_job


def cost_rows(registry: Any) -> list[dict[str, Any]]:
    from unified_pipeline.models.registry import MODELS
    from unified_pipeline.registry.aliases import metric_value
    from unified_pipeline.training.cost import per_point

    rows = []
    for model in registry.models():
        versions = registry.list(model)
        if not versions or model not in MODELS:
            continue
        v, entry = versions[-1], MODELS[model]
        cost = v.lineage.get("cost") or {}
        value = metric_value(v.metrics, entry.metric)
        ratio = per_point(cost, value, entry.higher_is_better) or {}
        rows.append({"model": model, "version": v.name, "metric": entry.metric, "value": value,
                     "wall_s": cost.get("wall_s"), "cpu_s": cost.get("cpu_s"), "gpu_s": cost.get("gpu_s"),
                     "peak_rss_mb": cost.get("peak_rss_mb"), "peak_gpu_mem_mb": cost.get("peak_gpu_mem_mb"),
                     "samples": cost.get("samples"), "attempts": cost.get("attempts"),
                     "cpu_s_per_point": ratio.get("cpu_s_per_point"), "gpu_s_per_point": ratio.get("gpu_s_per_point"),
                     "wall_s_per_point": ratio.get("wall_s_per_point")})
    return rows


def run(job: str = "collaborative_training") -> list[dict]:
    from unified_pipeline.registry import ModelRegistry

    with tempfile.TemporaryDirectory() as tmp:
        home = fresh_home(Path(tmp), "cost")
        run_job(home, job, {})
        rows = cost_rows(ModelRegistry(home / "registry"))
    save("cost", rows, "Per model: newest version after one collaborative_training run from the command line; "
                       "a point is a percentage point of a [0, 1] metric where higher is better, else one unit.")
    return rows


if __name__ == "__main__":
    run()
