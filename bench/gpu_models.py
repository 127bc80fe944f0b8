"""Every model trained on CUDA (bf16 autocast, TF32) against the same training on the CPU.

Each model's own `fit` runs on the newest tensors of its datasets with the main scenario's
hyperparameters, a fixed number of epochs and early stopping off, once on `cuda:0` and once on
the CPU (fp32, every core this process may use). samples/s is the last epoch's (after cuDNN
autotuning and allocator warm-up); peak GPU memory is torch's high-water mark of allocated
memory during that model's fit. Models built on others get the upstream versions trained on
the same device just before. The causal engine keeps NOTEARS on the CPU by choice
(causal_reasoning.engine_device); one extra row runs it on CUDA to test that choice.

    python -m bench.gpu_models [--epochs 2] [--max-train N] [--cpu-only] [--section gpu_models]
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.common import save
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.models.registry import MODELS
from unified_pipeline.paths import unified_home

# Upstream models before the models built on them; the slowest (and the extra NOTEARS-on-CUDA
# row) last, so a section stopped at its time limit keeps the rest.
ORDER = ["vision_service", "audio_service", "text_service", "multimodal_service", "audio_student",
         "environment_simulator", "alpha_deep_model", "adaptive_learning_controller", "causal_reasoning_engine"]
# The controller's study, shrunk as in the overhead bench: each trial is a real short training.
SMALL_STUDY = {"budget_epochs": 2, "study_epochs": 4, "check_seeds": 1}


def newest_tensors() -> dict[str, Path]:
    """Dataset name -> folder of its newest tensors."""
    found = {}
    for meta in (unified_home() / "tensors").glob("*/*/meta.json"):
        ds = meta.parent.parent.name
        if ds not in found or meta.stat().st_mtime > (found[ds] / "meta.json").stat().st_mtime:
            found[ds] = meta.parent
    return found


def datasets_for(name: str, bundles: dict[str, TensorBundle]) -> dict[str, TensorBundle]:
    entry = MODELS[name]
    of_kind = {ds: b for ds, b in bundles.items() if b.meta.get("kind") in entry.dataset_kinds}
    if entry.all_datasets:
        return of_kind
    picked = {}
    for kind in entry.dataset_kinds:
        named = [ds for ds in entry.default_datasets if ds in of_kind and of_kind[ds].meta.get("kind") == kind]
        any_of_kind = sorted(ds for ds, b in of_kind.items() if b.meta.get("kind") == kind)
        choice = (named or any_of_kind)[:1]
        picked.update({ds: of_kind[ds] for ds in choice})
    return picked


def shrink(bundle: TensorBundle, rows: int) -> TensorBundle:
    """The first `rows` training rows (a dry run's size); other splits stay whole."""
    # Stored rows (uint8, float16) stay stored: the bundle's decode specs turn them into model input.
    tensors = {k: ((v.stored() if hasattr(v, "stored") else v)[:rows] if k.startswith("train/") else v)
               for k, v in bundle.tensors.items()}
    sidecars = dict(bundle.sidecars)
    texts = sidecars.get("texts")
    if isinstance(texts, dict) and isinstance(texts.get("train"), list):
        sidecars["texts"] = {**texts, "train": texts["train"][:rows]}
    return TensorBundle(tensors=tensors, meta=bundle.meta, sidecars=sidecars, decode=bundle.decode)


def hparams(name: str, epochs: int) -> dict:
    from unified_pipeline.presets import load_preset

    hp = load_preset().hparams("collaborative_training", name)
    hp.update(epochs=epochs, early_stopping_patience=0, checkpoint_interval=0)
    if name == "adaptive_learning_controller":
        hp.update(SMALL_STUDY)
    return hp


def fit_once(name: str, device: str, datasets: dict, upstream: dict, epochs: int, work: Path) -> dict:
    from unified_pipeline.devices import bind_device
    from unified_pipeline.training.job import FitJob

    spec = MODELS[name].spec()
    out = work / device.replace(":", "") / name
    job = FitJob(model=name, datasets=datasets, upstream=upstream, hparams=hparams(name, epochs), device=device,
                 checkpoint_dir=work / "ckpt" / device.replace(":", "") / name, out_dir=out, seed=0,
                 log=logging.getLogger(f"bench.{name}"))
    cuda = device.startswith("cuda")
    if cuda:
        bind_device(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = spec.fit(job)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    steady = [r.get("samples_per_s") for r in result.history if isinstance(r, dict) and r.get("samples_per_s")]
    test = result.metrics.get("test", {})
    metric = MODELS[name].metric
    return {"device": result.device, "samples_per_s": steady[-1] if steady else result.samples_per_s,
            "wall_s": wall, "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "test_metric": test.get(metric), "out": out}


def run(epochs: int = 2, max_train: int = 0, cpu_only: bool = False, section: str = "gpu_models",
        models: list[str] | None = None) -> list[dict]:
    torch.set_num_threads(_cores())
    gpu = "cuda:0" if torch.cuda.is_available() and not cpu_only else None
    if gpu is None and not cpu_only:
        raise SystemExit("bench.gpu_models: no CUDA device (use --cpu-only for a dry run of the logic)")
    tensors = newest_tensors()
    if not tensors:
        raise SystemExit(f"bench.gpu_models: no tensors under {unified_home() / 'tensors'}: run the data_lane job first")
    bundles = {ds: TensorBundle.load(p) for ds, p in tensors.items()}
    if max_train:
        bundles = {ds: shrink(b, max_train) for ds, b in bundles.items()}
    devices = [d for d in (gpu, "cpu") if d]
    rows, outs = [], {d: {} for d in devices}
    label = "CUDA" if gpu else "CPU (dry run: the gpu columns are the CPU again)"
    notes = (f"{label}; {epochs} epochs per fit, early stopping off, main-scenario hyperparameters"
             + (f", training splits cut to {max_train} rows" if max_train else "")
             + f"; CPU side: fp32 on {_cores()} threads. samples/s: last epoch. speedup = gpu / cpu samples/s. "
               "causal_reasoning_engine: rows per second of solver time; it runs NOTEARS on the CPU unless forced.")

    def report(row: dict) -> None:
        # Saved after every model: a section stopped at its time limit keeps what it measured.
        rows.append(row)
        print(row, flush=True)
        save(section, rows, notes)

    with tempfile.TemporaryDirectory() as tmp:
        for name in models or ORDER:
            data = datasets_for(name, bundles)
            ups = MODELS[name].upstream_models
            if not data or any(u not in outs[devices[0]] for u in ups):
                report({**dict.fromkeys(COLUMNS), "model": name, "epochs": epochs,
                        "gpu_device": "skipped: no data or upstream model"})
                continue
            got = {}
            for dev in devices:
                got[dev] = fit_once(name, dev, data, {u: outs[dev][u] for u in ups}, epochs, Path(tmp))
                outs[dev][name] = got[dev]["out"]
            report(_row(name, epochs, got.get(gpu) if gpu else None, got["cpu"]))
            if name == "causal_reasoning_engine" and gpu:
                os.environ["UNIFIED_CAUSAL_DEVICE"] = "job"
                try:
                    forced = fit_once(name, gpu, data, {}, epochs, Path(tmp) / "forced")
                finally:
                    os.environ.pop("UNIFIED_CAUSAL_DEVICE", None)
                report(_row(f"{name} (NOTEARS forced onto CUDA)", epochs, forced, got["cpu"]))
    return rows


COLUMNS = ("model", "epochs", "gpu_device", "gpu_samples_per_s", "cpu_samples_per_s", "speedup", "gpu_fit_s",
           "cpu_fit_s", "peak_gpu_mib", "gpu_test_metric", "cpu_test_metric")


def _row(name: str, epochs: int, gpu: dict | None, cpu: dict) -> dict:
    gpu = gpu or cpu
    return {"model": name, "epochs": epochs, "gpu_device": gpu["device"], "gpu_samples_per_s": gpu["samples_per_s"],
            "cpu_samples_per_s": cpu["samples_per_s"],
            "speedup": gpu["samples_per_s"] / cpu["samples_per_s"] if cpu["samples_per_s"] else None,
            "gpu_fit_s": gpu["wall_s"], "cpu_fit_s": cpu["wall_s"], "peak_gpu_mib": gpu["peak_gpu_mib"],
            "gpu_test_metric": gpu["test_metric"], "cpu_test_metric": cpu["test_metric"]}


def _cores() -> int:
    from unified_pipeline.devices import available_cpus

    return available_cpus()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train", type=int, default=0, help="cut every training split to N rows (dry runs)")
    p.add_argument("--cpu-only", action="store_true", help="no CUDA side: checks the logic on a CPU machine")
    p.add_argument("--section", default="gpu_models")
    p.add_argument("--models", default="", help="comma-separated subset, in dependency order")
    a = p.parse_args()
    run(a.epochs, a.max_train, a.cpu_only, a.section, [m for m in a.models.split(",") if m] or None)


if __name__ == "__main__":
    main()
