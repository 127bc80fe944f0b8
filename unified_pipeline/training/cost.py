"""What one training attempt cost: CPU seconds, GPU seconds, peak memory, samples, wall time.

Measured around `fit` in the step's own process (Dagster runs each model step in its own
process, so process-wide counters belong to that step):

- `cpu_s`: user + system CPU time of every thread of the process (`time.process_time`);
- `gpu_s`: seconds the step held a CUDA device (wall time of the fit on it; 0 on CPU);
- `peak_gpu_mem_mb`: the CUDA caching allocator's peak reservation during the fit
  (`torch.cuda.max_memory_reserved`, what NVML would attribute to this process' tensors);
- `peak_rss_mb`: the process' resident-set high-water mark (Linux `VmHWM`, else `ru_maxrss`);
- `samples`: training samples consumed by the epochs that completed (from the epoch records);
- `wall_s`: `time.monotonic`, immune to clock changes.

A version's cost is the sum over its attempts, preempted ones included (`total`).
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

FIELDS = ("wall_s", "cpu_s", "gpu_s", "peak_gpu_mem_mb", "peak_rss_mb", "samples")
PEAKS = ("peak_gpu_mem_mb", "peak_rss_mb")  # combined by max, the rest by sum


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def epoch_samples(record: dict[str, Any]) -> int:
    """Samples of one epoch record (the trainer logs samples/s and the epoch's training time)."""
    if isinstance(record.get("samples"), (int, float)):
        return int(record["samples"])
    sps, secs = record.get("samples_per_s"), record.get("time_s")
    if isinstance(sps, (int, float)) and isinstance(secs, (int, float)):
        return int(round(sps * secs))
    return 0


class CostMeter:
    """Start before the fit, `stop(device)` after it (also when it raised)."""

    def __init__(self) -> None:
        self.samples = 0
        self._cuda = _cuda_ready()
        if self._cuda:
            import torch

            for i in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(i)
        self._wall0 = time.monotonic()
        self._cpu0 = time.process_time()

    def on_epoch(self, record: dict[str, Any]) -> None:
        self.samples += epoch_samples(record)

    def stop(self, device: str) -> dict[str, Any]:
        wall = time.monotonic() - self._wall0
        out = {"wall_s": round(wall, 3), "cpu_s": round(time.process_time() - self._cpu0, 3),
               "gpu_s": 0.0, "peak_gpu_mem_mb": 0.0, "peak_rss_mb": peak_rss_mb(), "samples": int(self.samples),
               "device": device}
        if self._cuda and str(device).startswith("cuda"):
            import torch

            torch.cuda.synchronize(device)
            out["gpu_s"] = round(time.monotonic() - self._wall0, 3)
            out["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
        return out


def _cuda_ready() -> bool:
    import torch

    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver must not stop training
        return False


def total(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The cost of a version: sums over attempts, peaks as maxima, and how many attempts it took."""
    out: dict[str, Any] = {k: 0.0 for k in FIELDS}
    for a in attempts:
        for k in FIELDS:
            v = a.get(k)
            if isinstance(v, (int, float)):
                out[k] = max(out[k], v) if k in PEAKS else out[k] + v
    out = {k: (int(v) if k == "samples" else round(v, 3)) for k, v in out.items()}
    out["attempts"] = len(attempts)
    return out


def per_point(cost: dict[str, Any], value: float | None, higher_is_better: bool = True) -> dict[str, float] | None:
    """Seconds per point (percentage point of a [0, 1] metric, else unit) of the headline metric."""
    if not isinstance(value, (int, float)) or value != value:
        return None
    points = value * 100 if 0 <= value <= 1 and higher_is_better else abs(value)
    if points <= 0:
        return None
    return {f"{k}_per_point": float(f"{float(cost.get(k, 0.0)) / points:.6g}") for k in ("wall_s", "cpu_s", "gpu_s")}


def metadata_numbers(cost: dict[str, Any]) -> dict[str, float]:
    """Top-level numbers for Dagster metadata, so the UI plots them across materialisations."""
    if not cost:
        return {}
    out = {f"cost_{k}": float(cost[k]) for k in ("cpu_s", "gpu_s", "peak_rss_mb", "peak_gpu_mem_mb", "wall_s") if k in cost}
    if "samples" in cost:
        out["samples_seen"] = float(cost["samples"])
    if "attempts" in cost:
        out["attempts"] = float(cost["attempts"])
    return out
