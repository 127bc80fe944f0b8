"""Samples/s of each classifier trained inside its Dagster asset vs a plain PyTorch loop.

Same nn.Module (built by the model file's `build`), same tensors, batch size, precision and
epochs; early stopping off. Runs alternate (plain, asset, plain, asset, ...) and the medians are
compared. The asset run goes through `materialize` of the real model asset, so it includes the
trainer, checkpoints, per-epoch logging and evaluation; samples/s counts training time only in
both cases.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import save
from unified_pipeline.datasets.base import TensorBundle
from unified_pipeline.training.distributed import INPUT_FIELDS

MODELS = {"vision_service": "digits", "audio_service": "spoken_digits", "text_service": "langid"}


def tensors_dir(dataset: str) -> Path:
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


def plain_loop(name: str, folder: Path, hp: dict, device: str) -> float:
    bundle = TensorBundle.load(folder)
    torch.manual_seed(0)
    model = build(name, bundle.meta, hp).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["learning_rate"], weight_decay=hp["weight_decay"])
    part = bundle.split("train")
    xs = [part[f].to(device) for f in INPUT_FIELDS[bundle.meta["kind"]]]
    y = part["y"].to(device)
    use_bf16 = device.startswith("cuda")
    seen, train_time = 0, 0.0
    for _ in range(hp["epochs"]):
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(len(y), device=device).split(hp["batch_size"]):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                loss = F.cross_entropy(model(*[x[idx] for x in xs]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"])
            opt.step()
            seen += len(idx)
        if use_bf16:
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():  # both sides evaluate once per epoch
            vpart = bundle.split("val")
            model(*[vpart[f].to(device) for f in INPUT_FIELDS[bundle.meta["kind"]]])
    return seen / train_time


def asset_run(name: str, dataset: str, folder: Path, hp: dict, home: Path) -> float:
    from dagster import AssetKey, DagsterInstance, SourceAsset, materialize

    from unified_pipeline import atomic
    from unified_pipeline.assets.json_io import JsonIOManager
    from unified_pipeline.assets.model_assets import model_asset
    from unified_pipeline.models.registry import MODELS as REGISTRY

    os.environ["UNIFIED_HOME"] = str(home)
    store = home / "assets"
    atomic.write_json(store / dataset / "tensors.json", {"dataset": dataset, "path": str(folder)})
    asset = model_asset(REGISTRY[name], [dataset])
    config = {k: hp[k] for k in ("epochs", "batch_size", "learning_rate", "early_stopping_patience")}
    with DagsterInstance.ephemeral() as instance:
        result = materialize([asset, SourceAsset(AssetKey([dataset, "tensors"]))], instance=instance, resources={"io_manager": JsonIOManager(base_dir=str(store))},
                             run_config={"ops": {name: {"config": {**config, "force_retrain": True}}}})
    (mat,) = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()
              if e.asset_key == AssetKey([name])]
    return float(mat.metadata["samples_per_s"].value)


def run(repeats: int = 2, epochs: int = 3) -> list[dict]:
    from unified_pipeline.presets import load_preset

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    preset = load_preset()
    original_home = os.environ.get("UNIFIED_HOME")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, dataset in MODELS.items():
            folder = tensors_dir(dataset)
            hp = {**preset.hparams("collaborative_training", name), "epochs": epochs, "early_stopping_patience": 0}
            plain, asset = [], []
            for i in range(repeats):
                plain.append(plain_loop(name, folder, hp, device))
                asset.append(asset_run(name, dataset, folder, hp, Path(tmp) / f"{name}-{i}"))
                if original_home:
                    os.environ["UNIFIED_HOME"] = original_home
            p, a = statistics.median(plain), statistics.median(asset)
            rows.append({"model": name, "device": device, "batch": hp["batch_size"], "epochs": epochs,
                         "plain_samples_per_s": p, "asset_samples_per_s": a, "ratio": a / p})
            print(json.dumps(rows[-1]))
    save("overhead", rows, "ratio = asset / plain (target >= 0.95); medians of alternating runs.")
    return rows


if __name__ == "__main__":
    run(*(int(a) for a in sys.argv[1:3]))
