"""Tensors in shards: bounded files, memory-mapped reads, the per-file cache, streamed training."""
from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import _train_worker as worker
from unified_pipeline.datasets import class_shards, shards
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.datasets.preprocess_cache import PreprocessCache
from unified_pipeline.datasets.shards import MappedRows
from unified_pipeline.datasets.vision import KIND as VISION
from unified_pipeline.datasets.splits import split_of
from unified_pipeline.hashing import dataset_version, known_hashes, sha256_file
from unified_pipeline.training.checkpoints import list_checkpoints
from unified_pipeline.training.trainer import TrainingInterrupted

torch.set_num_threads(1)


def _images(root, per_class=10, seed=0):
    rng = np.random.default_rng(seed)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / label / f"{i:03d}.png")
    return root


def _manifest(root):
    return VISION.build_manifest(root, dataset_version(root)[1])


def _sharded_split_bundle(tmp_path, limit=256):
    (x, y), (xv, yv) = worker.make_data()
    folder = tmp_path / "bundle"
    folder.mkdir(parents=True)
    shards.write_groups(folder, {"train/x": x, "train/y": y, "val/x": xv, "val/y": yv}, {}, limit=limit)
    TensorBundle({}, {"dataset": "d"}).save_json(folder)
    return folder, (x, y), (xv, yv)


def test_shards_are_bounded_and_read_back_equal_memory_mapped_or_whole(tmp_path):
    folder, (x, y), _ = _sharded_split_bundle(tmp_path, limit=256)
    files = sorted(folder.glob("train-*.safetensors"))
    assert len(files) == -(-len(x) // (256 // (6 * 4 + 8)))  # rows of x (24 B) + y (8 B) per 256 B shard
    lazy = TensorBundle.load(folder, in_memory_bytes=0).split("train")
    whole = TensorBundle.load(folder).split("train")
    assert isinstance(lazy["x"], MappedRows) and isinstance(whole["x"], torch.Tensor)
    assert isinstance(lazy["y"], torch.Tensor)  # one number per row: held in memory at any size
    assert torch.equal(whole["x"], x) and torch.equal(lazy["x"][:], x) and torch.equal(lazy["y"], y)
    rows = torch.tensor([5, 170, 0, 9, 9, -1])
    assert torch.equal(lazy["x"][rows], x[rows]) and torch.equal(lazy["x"][3], x[3])
    assert lazy["x"].shape == x.shape and len(lazy["x"]) == len(x)
    with pytest.raises(IndexError):
        lazy["x"][torch.tensor([len(x)])]


def test_vision_tensors_compact_sharded_and_equal_to_one_piece(tmp_path, monkeypatch):
    root = _images(tmp_path / "ds")
    m = _manifest(root)
    whole = VISION.build_tensors(root, m, PreprocessConfig())
    monkeypatch.setattr(class_shards, "SHARD_BYTES", 3 * 8 * 8 * 3)  # three images per shard
    out = tmp_path / "t"
    VISION.write_tensors(root, m, PreprocessConfig(), out, cache=PreprocessCache(None))
    assert len(list(out.glob("train-*.safetensors"))) == -(-whole.meta["splits"]["train"] // 3)
    stored = TensorBundle.load(out)
    assert stored.tensors["train/x"].dtype == torch.uint8  # pixels stay bytes on disk and in memory
    for split in ("train", "val", "test"):
        assert torch.allclose(stored.split(split)["x"], whole.split(split)["x"], atol=1e-6)
        assert torch.equal(TensorBundle.load(out, in_memory_bytes=0).split(split)["x"][:], stored.split(split)["x"])
    train = stored.split("train")["x"]
    assert abs(float(train.mean())) < 1e-5 and abs(float(train.std(unbiased=False)) - 1) < 1e-4


def _builder(tmp_path, root, cache, monkeypatch):
    """build(name) -> (tensors folder, the BuildReport of writing it), reusing earlier folders."""
    def build(name):
        out = tmp_path / "tensors" / name
        report = class_shards.write_class_tensors
        calls = {}

        def spy(*args, **kwargs):
            calls["report"] = report(*args, **kwargs)
            return calls["report"]

        monkeypatch.setattr(class_shards, "write_class_tensors", spy)
        VISION.write_tensors(root, _manifest(root), PreprocessConfig(), out,
                             reuse_from=class_shards.earlier_folders(out), cache=cache)
        monkeypatch.setattr(class_shards, "write_class_tensors", report)
        return out, calls["report"]

    return build


def test_cache_decodes_only_changed_files_reuses_shards_and_prunes(tmp_path, monkeypatch):
    root = _images(tmp_path / "ds", per_class=12)
    cache = PreprocessCache(tmp_path / "cache.sqlite")
    monkeypatch.setattr(class_shards, "SHARD_BYTES", 4 * 8 * 8 * 3)
    runs = []
    make = _builder(tmp_path, root, cache, monkeypatch)

    def build(name):
        out, report = make(name)
        runs.append(report)
        return out

    first = build("v1")
    assert (runs[0].decoded, runs[0].cached, runs[0].shards_reused) == (24, 0, 0) and len(cache) == 24
    TensorBundle.load(first)  # the first build is complete on its own
    build("v1-again")  # same data, new folder: every shard comes from the earlier folder
    assert runs[1].decoded == 0 and runs[1].shards_written == 0 and runs[1].shards_reused == runs[0].shards_written
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(root / "a" / "003.png")  # change one file
    changed = build("v2")
    assert runs[2].decoded == 1 and runs[2].shards_written == 1 and len(cache) == 25
    split_of = dict(zip(_manifest(root)["path"], _manifest(root)["split"]))
    assert TensorBundle.load(changed).sidecars["samples"][split_of["a/003.png"]].count("a/003.png") == 1
    shutil.rmtree(tmp_path / "tensors")
    build("v3")  # no earlier folder: the shards are rebuilt from the cache without decoding
    assert runs[3].decoded == 0 and runs[3].cached == 24 and runs[3].shards_written == runs[0].shards_written
    cache.max_bytes = 10 * 8 * 8 * 3
    assert cache.prune() == 15 and len(cache) == 10 and cache.total_bytes() <= cache.max_bytes


def test_an_added_file_rewrites_its_own_shard_not_every_later_one(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFIED_DECODE_WORKERS", "1")
    root = _images(tmp_path / "ds", per_class=300)
    monkeypatch.setattr(class_shards, "SHARD_BYTES", 64 * 8 * 8 * 3)  # at most 64 rows a shard
    build = _builder(tmp_path, root, PreprocessCache(tmp_path / "cache.sqlite"), monkeypatch)
    _, first = build("v1")
    assert first.shards_written >= 10 and sum(first.counts.values()) == 600
    # A new train image near the start of the train rows: cut by count, every later train shard would shift.
    for value in range(256):
        Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(root / "a" / "0005.png")
        if split_of(sha256_file(root / "a" / "0005.png")) == "train":
            break
    _, second = build("v2")
    assert second.decoded == 1 and second.shards_written <= 2
    assert second.shards_reused + second.shards_written == sum(len(e) for e in second.index.values())


def _train_streamed(tmp_path, ckdir=None, **kw):
    folder, _, (xv, yv) = _sharded_split_bundle(tmp_path, limit=512)
    lazy = TensorBundle.load(folder, in_memory_bytes=0)
    train = lazy.split("train")
    assert isinstance(train["x"], MappedRows)
    return worker_train(ckdir, (train["x"], train["y"]), (xv, yv), loader_threshold_bytes=0, loader_workers=2, **kw)


def worker_train(ckdir, train_split, val_split, **kw):
    real = worker.make_data
    worker.make_data = lambda: (train_split, val_split)
    try:
        return worker.train(ckdir, epochs=3, **kw)
    finally:
        worker.make_data = real


def test_streamed_training_from_shards_equals_in_memory_training(tmp_path):
    reference, ref_summary = worker.train(None, epochs=3)
    model, summary = _train_streamed(tmp_path)
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert [r["val_loss"] for r in summary.history] == [r["val_loss"] for r in ref_summary.history]


def test_streamed_training_resumes_mid_epoch_bit_identical(tmp_path):
    reference, _ = worker.train(None, epochs=3)
    steps = {"n": 0}

    def loss_sleep_hook():
        steps["n"] += 1
        if steps["n"] == 16:  # epoch 2, step 5: the trainer checkpoints at the step's end
            os.kill(os.getpid(), signal.SIGTERM)

    real_loss = worker.cross_entropy_loss
    worker.cross_entropy_loss = lambda m, b: (loss_sleep_hook(), real_loss(m, b))[1]
    try:
        with pytest.raises(TrainingInterrupted) as info:
            _train_streamed(tmp_path / "a", ckdir=tmp_path / "ck")
    finally:
        worker.cross_entropy_loss = real_loss
    assert info.value.checkpoint is not None and "step" in info.value.checkpoint.name
    assert any("step" in p.name for _k, p in list_checkpoints(tmp_path / "ck"))
    model, summary = _train_streamed(tmp_path / "b", ckdir=tmp_path / "ck")
    assert summary.resumed_from and "step" in summary.resumed_from
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_single_file_folders_from_before_shards_still_load(tmp_path):
    from safetensors.torch import save_file

    (x, y), _ = worker.make_data()
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({"train/x": x, "train/y": y}, str(folder / "tensors.safetensors"))
    TensorBundle({}, {"dataset": "d"}, {"samples": {"train": ["a"]}}).save_json(folder)
    got = TensorBundle.load(folder)
    assert torch.equal(got.split("train")["x"], x) and got.sidecars == {"samples": {"train": ["a"]}}


def fit_in_memory_then_streamed(tmp_path, **cfg) -> list[dict]:
    """The weights (on the CPU) after the same fit of a small image lane's shards, first held in
    memory, then streamed from disk as uint8 and decoded on the training device."""
    from unified_pipeline.models import vision_cnn
    from unified_pipeline.training.classification import classification_metric_fn, cross_entropy_loss
    from unified_pipeline.training.trainer import Trainer, TrainerConfig

    root = _images(tmp_path / "ds", per_class=16)
    out = tmp_path / "t"
    VISION.write_tensors(root, _manifest(root), PreprocessConfig(), out, cache=PreprocessCache(None))
    weights = []
    for budget in (1 << 30, 0):
        bundle = TensorBundle.load(out, in_memory_bytes=budget)
        train, val = bundle.split("train"), bundle.split("val")
        assert isinstance(train["x"], MappedRows) == (budget == 0)
        torch.manual_seed(0)
        model = vision_cnn.build(bundle.meta, {"widths": [4, 8]})
        config = TrainerConfig(epochs=2, batch_size=4, loader_threshold_bytes=budget, loader_workers=2, seed=1, **cfg)
        Trainer(model, config, loss_fn=cross_entropy_loss, metric_fn=classification_metric_fn,
                checkpoint_dir=None).fit((train["x"], train["y"]), (val["x"], val["y"]))
        weights.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return weights


def test_streamed_uint8_images_decoded_at_the_device_train_like_in_memory(tmp_path):
    weights = fit_in_memory_then_streamed(tmp_path)
    for k, v in weights[0].items():
        assert torch.equal(weights[1][k], v), k


def test_the_manifest_decodes_colour_images_once_for_the_tensors_too(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFIED_DECODE_WORKERS", "1")
    root = _images(tmp_path / "ds", per_class=6)
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8)).save(root / "a" / "grey.png")  # its mode waits for the rest
    cache = PreprocessCache(tmp_path / "cache.sqlite")
    manifest = VISION.build_manifest(root, dataset_version(root)[1], PreprocessConfig(facts_cache=cache))
    out, calls = tmp_path / "t", {}
    real = class_shards.write_class_tensors
    monkeypatch.setattr(class_shards, "write_class_tensors",
                        lambda *a, **k: calls.setdefault("report", real(*a, **k)))
    VISION.write_tensors(root, manifest, PreprocessConfig(), out, cache=cache)
    assert (calls["report"].decoded, calls["report"].cached) == (1, 12)  # only the grey image
    fresh = VISION.build_tensors(root, manifest, PreprocessConfig())  # decoded here, nothing cached
    stored = TensorBundle.load(out)
    for split in ("train", "val", "test"):
        assert torch.equal(stored.split(split)["x"], fresh.split(split)["x"])


def test_a_new_manifest_reads_only_new_or_changed_files(tmp_path, monkeypatch):
    from unified_pipeline.datasets import class_folders

    root = _images(tmp_path / "ds", per_class=5)
    cache = PreprocessCache(tmp_path / "cache.sqlite")
    read = []
    real = class_folders.decode_all
    monkeypatch.setattr(class_folders, "decode_all", lambda fn, r, rels, extra: read.append(sorted(rels)) or
                        real(fn, r, rels, extra, workers=1))

    def manifest():
        return VISION.build_manifest(root, dataset_version(root)[1], PreprocessConfig(facts_cache=cache))

    first = manifest()
    Image.fromarray(np.full((8, 8, 3), 3, dtype=np.uint8)).save(root / "b" / "002.png")
    (root / "a" / "001.png").write_bytes(b"not an image")
    second = manifest()
    assert len(read[0]) == 10 and read[1] == ["a/001.png", "b/002.png"]
    assert not second.set_index("path").loc["a/001.png", "decodable"]
    same = ["width", "height", "mode", "decodable"]
    assert second.drop(index=[1, 7])[same].equals(first.drop(index=[1, 7])[same])


def test_the_manifest_step_hashes_new_files_in_the_readers_same_version_as_hashing_first(home, monkeypatch):
    from unified_pipeline.assets.data_assets import build_manifest, hash_cache
    from unified_pipeline.datasets import DatasetRef
    from unified_pipeline.datasets import facts_readers

    root = _images(home.parent / "raw" / "ds", per_class=4)
    (root / "dataset.json").write_text('{"seed": 0}')
    for path in root.rglob("*"):  # written a while ago: a file modified just before a scan is read again
        os.utime(path, (path.stat().st_atime - 60, path.stat().st_mtime - 60))
    hashed = []
    real = facts_readers._small_file  # each file the readers hash is read through here
    monkeypatch.setattr(facts_readers, "_small_file", lambda p: hashed.append(os.path.basename(p)) or real(p))
    monkeypatch.setenv("UNIFIED_DECODE_WORKERS", "1")  # in-process, so the spy sees the reader's hashing
    ref = DatasetRef("ds", "vision", root)
    version, manifest, _path = build_manifest(ref)
    assert (version, dict(zip(manifest["path"], manifest["sha256"]))) == (
        dataset_version(root)[0], {k: v for k, v in dataset_version(root)[1].items() if k != "dataset.json"})
    assert len(hashed) == 8 and list(manifest["size"]) == [(root / p).stat().st_size for p in manifest["path"]]
    known, _sizes = known_hashes(root, hash_cache())
    assert None not in known.values()  # the readers' hashes went to the hash cache
    hashed.clear()
    Image.fromarray(np.full((8, 8, 3), 5, dtype=np.uint8)).save(root / "b" / "001.png")
    version2, manifest2, _ = build_manifest(ref)
    assert hashed == ["001.png"] and version2 == dataset_version(root)[0] != version


def test_rows_whose_pack_another_build_pruned_meanwhile_are_decoded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFIED_DECODE_WORKERS", "1")
    root = _images(tmp_path / "ds", per_class=6)
    cache = PreprocessCache(tmp_path / "cache.sqlite")
    manifest = VISION.build_manifest(root, dataset_version(root)[1], PreprocessConfig(facts_cache=cache))
    packs = list(cache.pack_folder.iterdir())
    assert packs and len(cache) == 24  # 12 facts, 12 rows in packs
    for pack in packs:  # the index still lists the rows: only reading them finds them gone
        pack.unlink()
    out = tmp_path / "t"
    VISION.write_tensors(root, manifest, PreprocessConfig(), out, cache=cache)
    fresh = VISION.build_tensors(root, manifest, PreprocessConfig())
    stored = TensorBundle.load(out)
    for split in ("train", "val", "test"):
        assert torch.equal(stored.split(split)["x"], fresh.split(split)["x"])
