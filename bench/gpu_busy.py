"""Share of wall time the GPU spends running kernels while a model trains (torch profiler).

Trains each classifier for a fixed number of steps with its tensors on the GPU and bf16
autocast, profiles the steady state, and divides the summed CUDA kernel time by the wall time
of those steps. Skipped (with a row saying so) when no CUDA device is present.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bench.common import save
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.training.distributed import INPUT_FIELDS

MODELS = {"vision_service": "digits", "audio_service": "spoken_digits", "text_service": "langid"}


def tensors_dir(dataset: str):
    from unified_pipeline.paths import unified_home

    found = sorted((unified_home() / "tensors" / dataset).glob("*/meta.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no tensors for {dataset}: run `make run` (or the data_lane job) first")
    return found[-1].parent


def build(name: str, meta: dict, hp: dict):
    import importlib

    from unified_pipeline.models.registry import MODELS as REGISTRY

    module = importlib.import_module(REGISTRY[name].module)
    hp = {**module.DEFAULTS, **hp}
    if name == "text_service":
        return module.build(meta, hp, int(meta.get("max_len")))
    return module.build(meta, hp)


def busy_fraction(name: str, dataset: str, batch: int, steps: int = 60) -> dict:
    device = "cuda:0"
    bundle = TensorBundle.load(tensors_dir(dataset))
    model = build(name, bundle.meta, {"learning_rate": 1e-3}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    part = bundle.split("train")
    xs = [part[f].to(device) for f in INPUT_FIELDS[bundle.meta["kind"]]]
    y = part["y"].to(device)
    idx_all = torch.randint(0, len(y), (steps + 10, batch), device=device)

    def step(idx):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(*[x[idx] for x in xs]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(10):  # warm-up: cuDNN autotuning, allocator
        step(idx_all[i])
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for i in range(10, steps + 10):
            step(idx_all[i])
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernel_us = sum(e.device_time_total for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)
    return {"model": name, "batch": batch, "steps": steps, "wall_s": wall, "kernel_s": kernel_us / 1e6,
            "busy_fraction": kernel_us / 1e6 / wall, "samples_per_s": steps * batch / wall}


def run() -> list[dict]:
    if not torch.cuda.is_available():
        rows = [{"model": "-", "note": "no CUDA device: nothing measured"}]
        save("gpu_busy", rows)
        return rows
    rows = []
    for name, dataset in MODELS.items():
        for batch in (64, 512):
            rows.append(busy_fraction(name, dataset, batch))
            print(rows[-1])
    save("gpu_busy", rows, "Kernel time summed over the CUDA activity of the profiled steps / their wall time.")
    return rows


if __name__ == "__main__":
    run()
