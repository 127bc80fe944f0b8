"""Share of wall time the GPU spends running kernels while a service model trains (torch profiler).

Trains each classifier for a fixed number of steps with its tensors on the GPU (lengths, which
the audio model packs with, on the host as in the trainer) under bf16 autocast, profiles the
steady state, and divides the summed CUDA kernel time by the wall time of those steps; also
the peak GPU memory. Without a CUDA device it says so and measures nothing.

    python -m bench.gpu_busy [--steps 60] [--section gpu_busy]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bench.common import save
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.training.distributed import HOST_FIELDS, INPUT_FIELDS

MODELS = {"vision_service": "digits", "audio_service": "spoken_digits", "text_service": "langid"}


def tensors_dir(dataset: str):
    from unified_pipeline.paths import unified_home

    found = sorted((unified_home() / "tensors" / dataset).glob("*/meta.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no tensors for {dataset}: run `make run` (or the data_lane job) first")
    return found[-1].parent


def build(name: str, meta: dict, hp: dict):
    from unified_pipeline.models.registry import MODELS as REGISTRY

    spec = REGISTRY[name].spec()
    return spec.build(meta, spec.resolve(hp))


def busy_fraction(name: str, dataset: str, batch: int, steps: int = 60) -> dict:
    from unified_pipeline.training.fit_settings import allow_tf32

    device = "cuda:0"
    allow_tf32()
    bundle = TensorBundle.load(tensors_dir(dataset))
    model = build(name, bundle.meta, {"learning_rate": 1e-3}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    part = bundle.split("train")
    fields = INPUT_FIELDS[bundle.meta["kind"]]
    xs = [part[f] if f in HOST_FIELDS else part[f].to(device) for f in fields]
    y = part["y"].to(device)
    idx_host = torch.randint(0, len(y), (steps + 10, batch))
    idx_all = idx_host.to(device)

    def step(i):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            batch_in = [x[idx_host[i]] if x.device.type == "cpu" else x[idx_all[i]] for x in xs]
            loss = F.cross_entropy(model(*batch_in).float(), y[idx_all[i]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(10):  # warm-up: cuDNN autotuning, allocator
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(10, steps + 10):
            step(i)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages()
                    if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"model": name, "batch": batch, "steps": steps, "wall_s": wall, "kernel_s": kernel_us / 1e6,
            "busy_fraction": kernel_us / 1e6 / wall, "samples_per_s": steps * batch / wall,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}


def run(steps: int = 60, section: str = "gpu_busy") -> list[dict]:
    if not torch.cuda.is_available():
        print("bench.gpu_busy: no CUDA device: nothing measured")
        return []
    rows = []
    for name, dataset in MODELS.items():
        for batch in (64, 512):
            rows.append(busy_fraction(name, dataset, batch, steps))
            print(rows[-1], flush=True)
    save(section, rows, "CUDA kernel time (self time of every CUDA kernel in the profiled steps) / their wall time; "
                        "bf16 autocast, TF32; peak_gpu_mib: allocated high-water mark of the profiled steps.")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--section", default="gpu_busy")
    a = p.parse_args()
    run(a.steps, a.section)
