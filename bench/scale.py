"""`make bench` section `scale`: the image and audio lanes at 1x, 10x and 100x the sample size.

Per size: files/s of the tensors step with one core and with every core (empty cache), the
torchvision ImageFolder + DataLoader(num_workers=2) reference reading the same images, peak
RSS of the tensors step and of one streamed training epoch, and the rebuild after one file
changed against the full build. Every measured step runs in its own process so its peak RSS
(ru_maxrss; its worker processes reported apart) is its own.

Env: SCALE_IMAGE_FACTORS (default 1,10,100), SCALE_LARGE_IMAGE_FACTORS (96x96 images; default 10),
SCALE_AUDIO_FACTORS (default 1,10),
SCALE_ONE_CORE_UPTO (largest factor also built on one core; default 10), SCALE_DATA_DIR (keep the
generated lanes there between runs instead of in a temporary folder), SCALE_EPOCH_DEVICE (where the
streamed epoch trains; default cpu, e.g. cuda:0).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import save
from bench.scale_data import IMAGE_SIZE

LARGE_IMAGE_SIZE = 96  # the size the slow tensors step was first measured at

STEP_TIMEOUT_S = 3600


def _peaks() -> dict:
    return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _step(name: str, env: dict, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.scale", name, *args], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"scale step {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- steps (each in a fresh process) ---------------------------------------------------------

def _imports(kind: str) -> None:
    """Done before the clock starts, as they cost a step's process the same at any size: torch,
    the kind's module and its decoder library imported (PIL with its format plugins, soundfile;
    30 ms for PIL), and the lane's code version computed (loading the definitions computes it,
    which parses each file of its closure once)."""
    import importlib

    import unified_pipeline.datasets.class_shards  # noqa: F401 (torch)
    from unified_pipeline.code_version import code_version
    from unified_pipeline.datasets import KIND_MODULES

    importlib.import_module(f"unified_pipeline.datasets.{kind}")
    if kind == "vision":
        from PIL import Image

        Image.preinit()
    else:
        import soundfile  # noqa: F401
    code_version(KIND_MODULES[kind], f"unified_pipeline.quality.{kind}")  # as data_assets.lane_assets does


def step_manifest(root: str, kind: str) -> dict:
    from unified_pipeline.assets.data_assets import build_manifest
    from unified_pipeline.datasets import DatasetRef, class_folders

    _imports(kind)
    reading = _timed(class_folders, "file_facts")  # the pass that hashes, decodes and checks each new file
    t0 = time.perf_counter()
    version, df, path = build_manifest(DatasetRef(Path(root).name, kind, Path(root)), {})
    return {"seconds": time.perf_counter() - t0, "reading_seconds": reading[0], "version": version,
            "manifest": str(path), "rows": len(df), **_peaks()}


def _timed(module, name: str) -> list[float]:
    """module.name wrapped to add its wall time to the returned list's one number."""
    spent, real = [0.0], getattr(module, name)

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    setattr(module, name, timed)
    return spent


def step_tensors(root: str, kind: str, manifest: str, version: str) -> dict:
    from unified_pipeline.assets.data_assets import build_tensors
    from unified_pipeline.datasets import DatasetRef

    _imports(kind)
    t0 = time.perf_counter()
    folder, reused = build_tensors(DatasetRef(Path(root).name, kind, Path(root)), Path(manifest), version, {})
    secs = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in folder.iterdir())
    return {"seconds": secs, "folder": str(folder), "bytes": size, **_peaks()}


def step_epoch(folder: str) -> dict:
    import torch

    from unified_pipeline.datasets.base import TensorBundle
    from unified_pipeline.models import vision_cnn
    from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
    from unified_pipeline.training.trainer import Trainer, TrainerConfig

    torch.set_num_threads(1)  # the machine's other core serves the loader workers
    bundle = TensorBundle.load(folder, in_memory_bytes=0)  # kept on disk at every size: the bounded path
    train, val = bundle.split("train"), bundle.split("val")
    model = vision_cnn.build(bundle.meta, {"widths": [8, 16]})
    cfg = TrainerConfig(epochs=1, batch_size=256, loader_threshold_bytes=0, loader_workers=2, checkpoint_interval=0,
                        device=os.environ.get("SCALE_EPOCH_DEVICE", "cpu"))
    trainer = Trainer(model, cfg, loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn, checkpoint_dir=None)
    t0 = time.perf_counter()
    summary = trainer.fit((train["x"], train["y"]), (val["x"], val["y"]))
    return {"seconds": time.perf_counter() - t0, "samples_per_s": summary.samples_per_s, "device": summary.device,
            "val_accuracy": summary.best_metric, "train_rows": len(train["y"]), **_peaks()}


def step_torchvision(root: str) -> dict:
    import torch
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    data = datasets.ImageFolder(root, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(data, batch_size=256, num_workers=2)
    t0 = time.perf_counter()
    n = sum(len(y) for _x, y in loader)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "files": n, "files_per_s": n / secs, **_peaks()}


STEPS = {"manifest": step_manifest, "tensors": step_tensors, "epoch": step_epoch, "torchvision": step_torchvision}


# ---- the section ------------------------------------------------------------------------------

def _factors(name: str, default: str) -> list[int]:
    return [int(v) for v in os.environ.get(name, default).split(",") if v.strip()]


def _lane(kind: str, factor: int, tmp: Path, one_core_upto: int, size: int = IMAGE_SIZE) -> list[dict]:
    from bench.scale_data import audio_lane, image_lane

    kept = os.environ.get("SCALE_DATA_DIR")  # lanes kept between runs: writing 180,000 images takes a while
    name = f"{kind}{size if kind == 'vision' and size != IMAGE_SIZE else ''}"
    root = (Path(kept) if kept else tmp) / f"{name}_x{factor}"
    done = root.with_name(root.name + ".complete")
    t0 = time.perf_counter()
    if done.is_file():
        n = int(done.read_text())
    else:
        shutil.rmtree(root, ignore_errors=True)
        n = image_lane(root, factor, size) if kind == "vision" else audio_lane(root, factor, tmp)
        done.write_text(str(n))
    print(f"{name} x{factor}: {n} files ready in {time.perf_counter() - t0:.0f}s", flush=True)
    _read_all(root)
    home = {"UNIFIED_HOME": str(tmp / f"home_{name}_{factor}")}
    man = _step("manifest", home, str(root), kind)
    full = _step("tensors", home, str(root), kind, man["manifest"], man["version"])
    rows = [_row(name, factor, n, "manifest, empty caches (hash + decode every file, all cores)", man["seconds"], man),
            _row(name, factor, n, "the manifest's reading pass alone (hash, decode, check, cache each file)",
                 man["reading_seconds"], note="inside the manifest step above"),
            _row(name, factor, n, "tensors step, all cores, after that manifest", full["seconds"], full),
            _row(name, factor, n, "lane's first build: manifest + tensors", man["seconds"] + full["seconds"],
                 note="every file hashed and decoded once")]
    if factor <= one_core_upto and name == kind:
        one_home = {"UNIFIED_HOME": str(tmp / f"home1_{name}_{factor}"), "UNIFIED_DECODE_WORKERS": "1"}
        man1 = _step("manifest", one_home, str(root), kind)
        one = _step("tensors", one_home, str(root), kind, man1["manifest"], man1["version"])
        rows.append(_row(name, factor, n, "lane's first build on one core: manifest + tensors",
                         man1["seconds"] + one["seconds"], one))
    if kind == "vision":
        ref = _step("torchvision", {}, str(root))
        rows.append(_row(name, factor, n, "torchvision ImageFolder + DataLoader(num_workers=2)", ref["seconds"], ref))
    _change_one(sorted(root.rglob("*.png" if kind == "vision" else "*.wav"))[n // 2])
    man2 = _step("manifest", home, str(root), kind)
    again = _step("tensors", home, str(root), kind, man2["manifest"], man2["version"])
    rows.append(_row(name, factor, n, "manifest after one file changed", man2["seconds"],
                     note=f"{man2['seconds'] / man['seconds']:.1%} of the first manifest"))
    rows.append(_row(name, factor, n, "tensors step after one file changed", again["seconds"], again,
                     note=f"{again['seconds'] / full['seconds']:.1%} of the full build"))
    lane_full, lane_one = man["seconds"] + full["seconds"], man2["seconds"] + again["seconds"]
    rows.append(_row(name, factor, n, "lane (manifest + tensors) after one file changed", lane_one,
                     note=f"{lane_one / lane_full:.1%} of the lane's first build ({lane_full:.1f}s)"))
    if name == "vision":  # (the epoch's memory is measured at 1x, 10x and 100x; at 96x96 it takes minutes)
        ep = _step("epoch", {"UNIFIED_TENSORS_IN_MEMORY_BYTES": "0"}, full["folder"])
        rows.append(_row(name, factor, n, "one training epoch, streamed from shards", ep["seconds"], ep,
                         note=f"{ep['samples_per_s']:.0f} samples/s, val acc {ep['val_accuracy']:.3f}"
                              + ("" if ep["device"] == "cpu" else f", on {ep['device']}")))
    return rows


def _read_all(root: Path) -> None:
    """Every file of the lane read once, so each timed reader finds it in the page cache: a lane
    written in an earlier run may have left it, and the first reader would pay the disk for all."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                while fh.read(1 << 20):
                    pass


def _change_one(path: Path) -> None:
    """New content for one file: the image inverted, the clip at half the level."""
    if path.suffix == ".png":
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            ImageOps.invert(im.convert("RGB")).save(path)
    else:
        import soundfile as sf

        wave, rate = sf.read(path, dtype="float32")
        sf.write(path, wave * 0.5, rate, subtype="PCM_16")


def _row(kind: str, factor: int, files: int, stage: str, secs: float, peaks: dict | None = None, note: str = "") -> dict:
    print(f"{kind} {factor}x {stage}: {secs:.1f}s {json.dumps(peaks or {})[:300]} {note}", flush=True)
    return {"lane": kind, "size": f"{factor}x", "files": files, "stage": stage, "seconds": secs,
            "files_per_s": files / secs if secs > 0 else None,
            "peak_rss_mb": (peaks or {}).get("rss_mb"), "workers_peak_rss_mb": (peaks or {}).get("workers_rss_mb"),
            "note": note}


def run() -> list[dict]:
    one_core_upto = int(os.environ.get("SCALE_ONE_CORE_UPTO", "10"))
    rows: list[dict] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for kind, size, factors in (("vision", IMAGE_SIZE, _factors("SCALE_IMAGE_FACTORS", "1,10,100")),
                                    ("vision", LARGE_IMAGE_SIZE, _factors("SCALE_LARGE_IMAGE_FACTORS", "10")),
                                    ("audio", None, _factors("SCALE_AUDIO_FACTORS", "1,10"))):
            for factor in factors:
                rows += _lane(kind, factor, Path(tmp), one_core_upto, size)
                save("scale", rows, _notes(load_before))  # a long run leaves its finished sizes behind
    save("scale", rows, _notes(load_before))
    return rows


def _notes(load_before: tuple) -> str:
    return (f"Images: 32x32 RGB PNGs (lane vision), 96x96 (vision96); audio: 1 s clips at 8 kHz, features at 16 kHz. files_per_s = files / "
            f"seconds of the stage. The manifest step hashes every file and decodes each new one on every "
            f"core (a colour image's tensor row is cached then, so the tensors step decodes only grey "
            f"images and audio); the tensors step reads the manifest's columns document, takes rows from the cache (decoding "
            f"misses) and writes shards. Imports (torch, the kind's module, PIL or soundfile: "
            f"the same cost at any size) are outside the timings, and so is the disk: every file of a lane is "
            f"read once before its first step. Peak RSS in MB of the step's process; "
            f"worker processes apart (ru_maxrss of children; spawned, so their own). Load average before "
            f"{load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in STEPS:
        print(json.dumps(STEPS[sys.argv[1]](*sys.argv[2:])), flush=True)
    else:
        run()
