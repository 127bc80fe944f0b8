"""The four service models on tiny separable datasets built through the real data lanes.

Each model: output shapes, save/load round trip with identical outputs, a short fit() that
clearly beats chance, and predict() on raw files/strings. The multimodal model trains on top
of the tiny vision, audio and text models produced here.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.errors import DatasetError
from unified_pipeline.hashing import dataset_version
from unified_pipeline.models import audio_rnn, multimodal_fusion, text_transformer, vision_cnn
from unified_pipeline.models.base import BaseModel
from unified_pipeline.training.job import FitJob

DIGITS = ("0", "1", "2")
WORDS = ("zero", "one", "two")
FAST = {"epochs": 6, "batch_size": 16, "learning_rate": 5e-3, "checkpoint_interval": 0, "early_stopping_patience": 0}


def _bundle(kind: str, root: Path, cfg: PreprocessConfig | None = None):
    import importlib

    lane = importlib.import_module(f"unified_pipeline.datasets.{kind}").KIND
    _, hashes = dataset_version(root)
    return lane.build_tensors(root, lane.build_manifest(root, hashes), cfg or PreprocessConfig())


def _job(tmp: Path, name: str, datasets: dict, hparams: dict, upstream: dict | None = None) -> FitJob:
    return FitJob(model=name, datasets=datasets, upstream=upstream or {}, hparams=hparams, device="cpu",
                  checkpoint_dir=tmp / "ckpt" / name, out_dir=tmp / "out" / name, seed=0,
                  log=logging.getLogger("test_models"))


def _write_images(root: Path, per_class: int = 24, size: int = 10) -> dict[str, list[Path]]:
    """Class k lights a bar in row band k, at a random column offset, with noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    files: dict[str, list[Path]] = {}
    for k, label in enumerate(DIGITS):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size)).astype(np.uint8)
            row = 1 + 3 * k
            start = int(rng.integers(0, 3))
            img[row:row + 2, start:start + 7] = 255
            path = root / label / f"{label}_{i}.png"
            Image.fromarray(img, mode="L").save(path)
            files.setdefault(label, []).append(path)
    return files


def _write_clips(root: Path, per_class: int = 24, rate: int = 8000) -> dict[str, list[Path]]:
    """Class k is a tone at one of three well-separated frequencies, random length, noisy."""
    import soundfile as sf

    rng = np.random.default_rng(1)
    files: dict[str, list[Path]] = {}
    for k, label in enumerate(WORDS):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            n = int(rate * rng.uniform(0.15, 0.3))
            t = np.arange(n) / rate
            wave = 0.5 * np.sin(2 * math.pi * (300 * 3 ** k) * t) + 0.05 * rng.standard_normal(n)
            path = root / label / f"{label}_{i}.wav"
            sf.write(path, wave.astype(np.float32), rate)
            files.setdefault(label, []).append(path)
    return files


AUDIO_CFG = PreprocessConfig(sample_rate=8000, n_mels=16, max_audio_seconds=0.3)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def images(work):
    files = _write_images(work / "raw" / "bars")
    return _bundle("vision", work / "raw" / "bars"), files


@pytest.fixture(scope="module")
def clips(work):
    files = _write_clips(work / "raw" / "tones")
    return _bundle("audio", work / "raw" / "tones", AUDIO_CFG), files


@pytest.fixture(scope="module")
def texts(work):
    rng = np.random.default_rng(2)
    alphabets = {"left": "asdfg", "right": "hjklö"}
    root = work / "raw" / "keys"
    root.mkdir(parents=True)
    with open(root / "data.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(160):
            label = "left" if i % 2 else "right"
            word = "".join(rng.choice(list(alphabets[label]), int(rng.integers(3, 9))))
            w.writerow([word, label])
    return _bundle("text", root, PreprocessConfig(max_text_len=12))


@pytest.fixture(scope="module")
def numbers(work):
    """Number words 0-2 in every sample language, spelled by num2words, labelled with the digit."""
    from unified_pipeline.datasets.samples.number_words import number_word_rows

    root = work / "raw" / "numbers"
    root.mkdir(parents=True)
    with open(root / "data.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(r for r in number_word_rows() if r[1] in DIGITS)
    return _bundle("text", root, PreprocessConfig(max_text_len=16))


@pytest.fixture(scope="module")
def text_model(work, numbers):
    hp = {**FAST, "epochs": 8, "d_model": 16, "n_heads": 2, "n_layers": 1, "ngram_buckets": 256}
    job = _job(work / "numbers", "text_service", {"numbers": numbers}, hp)  # own folders: the text test keeps its own
    return text_transformer.fit(job), job.out_dir


@pytest.fixture(scope="module")
def vision_model(work, images):
    bundle, _ = images
    return vision_cnn.fit(_job(work, "vision_service", {"bars": bundle}, dict(FAST))), work / "out" / "vision_service"


@pytest.fixture(scope="module")
def audio_model(work, clips):
    bundle, _ = clips
    return audio_rnn.fit(_job(work, "audio_service", {"tones": bundle}, dict(FAST))), work / "out" / "audio_service"


def _roundtrip(model: BaseModel, inputs: tuple, tmp: Path) -> None:
    model.eval()
    with torch.no_grad():
        before = model(*inputs)
    model.save(tmp / "saved", extra={"classes": ["a"]})
    loaded = BaseModel.load(tmp / "saved")
    with torch.no_grad():
        after = loaded(*inputs)
    assert type(loaded) is type(model)
    assert torch.equal(before, after)
    assert loaded.extra == {"classes": ["a"]}


def test_vision_shapes_roundtrip_and_sizes(tmp_path, images):
    bundle, _ = images
    model = vision_cnn.build(bundle.meta, {"widths": [8, 16]})
    x = bundle.split("train")["x"][:5]
    assert model(x).shape == (5, 3)
    assert model.encode(x).shape == (5, model.embedding_dim)
    _roundtrip(model, (x,), tmp_path)
    big = vision_cnn.build({"classes": list("abcd"), "channels": 3, "image_size": [40, 30]}, {"norm": "group"})
    assert big(torch.randn(2, 3, 40, 30)).shape == (2, 4)


def test_audio_shapes_and_roundtrip(tmp_path, clips):
    bundle, _ = clips
    model = audio_rnn.build(bundle.meta, {"rnn": "lstm", "hidden_size": 8})
    part = bundle.split("train")
    x, n = part["x"][:4], part["lengths"][:4]
    assert model(x, n).shape == (4, 3)
    assert model.encode(x, n).shape == (4, model.embedding_dim)
    # Frames past a clip's length must not change its output.
    model.eval()
    noisy = x.clone()
    noisy[0, :, int(n[0]):] = 5.0
    assert torch.allclose(model(x, n)[0], model(noisy, n)[0], atol=1e-5)
    _roundtrip(model, (x, n), tmp_path)


def test_text_shapes_padding_and_roundtrip(tmp_path, texts):
    model = text_transformer.build(texts.meta, {"d_model": 16, "n_heads": 2, "n_layers": 1}, 12)
    x = texts.split("train")["x"][:6]
    assert model(x).shape == (6, 2)
    model.eval()
    wider = torch.cat([x, torch.zeros(6, 4, dtype=torch.long)], dim=1)[:, :12]
    assert torch.allclose(model(x), model(wider), atol=1e-5)  # trailing padding changes nothing
    _roundtrip(model, (x,), tmp_path)


def _check_predictions(preds, n, classes):
    assert len(preds) == n
    for label, prob in preds:
        assert label in classes and 0.0 <= prob <= 1.0


def test_vision_fit_and_predict(vision_model, images):
    result, out = vision_model
    _, files = images
    assert result.metrics["test"]["accuracy"] >= 0.8  # chance is 1/3
    assert (out / "weights.safetensors").exists() and (out / "config.json").exists()
    paths = [files[label][0] for label in DIGITS]
    preds = vision_cnn.predict(out, paths)
    _check_predictions(preds, 3, DIGITS)
    assert [p[0] for p in preds] == list(DIGITS)
    with pytest.raises(DatasetError, match="nothere.png"):
        vision_cnn.predict(out, [out / "nothere.png"])


def test_audio_fit_and_predict(audio_model, clips):
    result, out = audio_model
    _, files = clips
    assert result.metrics["test"]["accuracy"] >= 0.8
    preds = audio_rnn.predict(out, [files[w][-1] for w in WORDS])
    _check_predictions(preds, 3, WORDS)
    assert [p[0] for p in preds] == list(WORDS)


def test_text_fit_beats_chance_and_reports_baseline(work, texts):
    hp = {**FAST, "epochs": 8, "d_model": 32, "n_heads": 2, "n_layers": 1, "ngram_buckets": 512}
    result = text_transformer.fit(_job(work, "text_service", {"keys": texts}, hp))
    assert result.metrics["test"]["accuracy"] >= 0.8  # chance is 1/2
    # The n-gram baseline is a real model too: it separates the two alphabets.
    assert result.metrics["baseline"]["accuracy"] >= 0.9
    assert result.notes["baseline_name"].startswith("char 1-4-gram")
    preds = text_transformer.predict(work / "out" / "text_service", ["asdfsa", "hjkköl", "zzz"])
    _check_predictions(preds, 3, ["left", "right"])
    assert [p[0] for p in preds[:2]] == ["left", "right"]


def test_make_tuples_balanced_deterministic_and_matched_by_meaning():
    yv = torch.tensor([0, 1, 2, 0, 1, 2])
    ya = torch.tensor([2, 1, 0, 0])
    yt = torch.tensor([1, 0, 2, 2, 1])
    sides = [(yv, list(DIGITS)), (ya, list(WORDS)), (yt, list(DIGITS))]
    a = multimodal_fusion.make_tuples(sides, 300, seed=3)
    b = multimodal_fusion.make_tuples(sides, 300, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a[0], b[0])) and torch.equal(a[1], b[1])
    (vi, ai, ti), match = a
    assert int(match.sum()) == 150
    keys = torch.tensor([[int(yv[i]), WORDS.index(WORDS[int(ya[j])]), int(yt[k])] for i, j, k in zip(vi, ai, ti)])
    same = (keys == keys[:, :1]).all(1)
    assert torch.equal(same.long(), match)
    # Negatives differ on one side or two, each side sometimes: every side must be read.
    differs = (keys != keys.mode(1).values[:, None])[match == 0]
    assert bool(differs.any(0).all())
    with pytest.raises(DatasetError, match="no class shared"):
        multimodal_fusion.make_tuples([(yv, ["cat", "dog", "cow"]), (ya, list(WORDS))], 4, seed=0)


def test_multimodal_fit_reuses_frozen_encoders(work, images, clips, numbers, vision_model, audio_model, text_model):
    (vb, files_v), (ab, files_a) = images, clips
    hp = {**FAST, "epochs": 4, "pairs_train": 600, "pairs_eval": 120}
    upstream = {"vision_service": vision_model[1], "audio_service": audio_model[1], "text_service": text_model[1]}
    job = _job(work, "multimodal_service", {"bars": vb, "tones": ab, "numbers": numbers}, hp, upstream)
    result = multimodal_fusion.fit(job)
    assert result.metrics["test"]["accuracy"] >= 0.75  # chance is 1/2
    by_side = {k: v for k, v in result.metrics["test"].items() if k.startswith("accuracy_")}
    assert set(by_side) == {"accuracy_all_sides_match", "accuracy_only_vision_differs",
                            "accuracy_only_audio_differs", "accuracy_only_text_differs"}
    result.write(job.out_dir)  # as the pipeline does after fit
    assert json.loads((job.out_dir / "metrics.json").read_text())["test"]["accuracy_only_text_differs"] == \
        by_side["accuracy_only_text_differs"]
    # The from-scratch twin trains too (an untrained one scores 1/2), and reuse does at least as well.
    assert 0.75 <= result.metrics["baseline"]["accuracy"] <= result.metrics["test"]["accuracy"]
    assert result.notes["baseline_name"] == "same architecture from scratch"
    assert set(result.notes["upstream"]) == {"vision", "audio", "text"}
    model = BaseModel.load(job.out_dir)
    upstream_vision = BaseModel.load(vision_model[1])
    x = vb.split("test")["x"][:3]
    assert torch.allclose(model.vision.encode(x), upstream_vision.encode(x))  # frozen: weights unchanged
    inputs = [(files_v["1"][0], files_a["one"][0], "Jeden"),
              json.dumps({"image": str(files_v["2"][0]), "audio": str(files_a["zero"][0]), "text": "dos"})]
    preds = multimodal_fusion.predict(job.out_dir, inputs)
    _check_predictions(preds, 2, ["match", "no_match"])
    assert [p[0] for p in preds] == ["match", "no_match"]  # one, one, "Jeden" / two, zero, "dos"
    with pytest.raises(DatasetError, match="must give image, audio, text"):
        multimodal_fusion.predict(job.out_dir, [(files_v["1"][0], files_a["one"][0])])
    # A vision+audio model (no text config) still builds: versions saved before the text side load.
    two = multimodal_fusion.FusionModel(multimodal_fusion.FusionConfig(vision=model.config.vision, audio=model.config.audio))
    assert two.sides == ("vision", "audio") and two.embedding_dim == 4 * two.config.fusion_dim
