"""Audio lane: manifest facts, resampling and log-mel tensors, bad clips, spoken-digit samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from unified_pipeline import atomic
from unified_pipeline.datasets import audio
from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.errors import DatasetError
from unified_pipeline.hashing import dataset_version
from unified_pipeline.quality import audio as suite
from test_vision_data import gx_failures  # tests/ is on sys.path, as for tiny_data

KIND = audio.KIND


def tone(freq: float, rate: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def make_clips(root: Path, counts: dict[str, int], rate=16000, seconds=0.5, ext="wav", channels=1, seed=0) -> Path:
    for k, (label, n) in enumerate(counts.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            freq = 300 + 200 * k + 7 * i
            sf.write(root / label / f"{i:03d}.{ext}", tone(freq, rate, seconds, channels, seed + i), rate)
    return root


def manifest_of(root: Path):
    return KIND.build_manifest(root, dataset_version(root)[1])


def test_manifest_reads_any_rate_and_channel_count(tmp_path):
    root = make_clips(tmp_path / "ds", {"low": 2}, rate=8000, seconds=0.25, channels=2)
    make_clips(root, {"high": 2}, rate=44100, seconds=0.75, ext="flac")
    make_clips(root, {"mid": 2}, rate=22050, seconds=0.5, ext="ogg")
    m = manifest_of(root).set_index("path")
    assert list(manifest_of(root).columns) == audio.MANIFEST_COLUMNS
    assert m["decodable"].all()
    assert m.loc["low/000.wav", ["sample_rate", "channels", "frames"]].tolist() == [8000, 2, 2000]
    assert m.loc["high/001.flac", "format"] == "FLAC" and m.loc["mid/000.ogg", "format"] == "OGG"
    assert m.loc["high/000.flac", "duration_s"] == pytest.approx(0.75)
    assert gx_failures(suite, manifest_of(root)) == {}


def test_tensors_shapes_lengths_padding_and_meta(tmp_path):
    root = make_clips(tmp_path / "ds", {"a": 8, "b": 8}, rate=16000, seconds=0.5)
    make_clips(root, {"c": 8}, rate=22050, seconds=3.0, channels=2)  # longer than max: trimmed
    m = manifest_of(root)
    cfg = PreprocessConfig(sample_rate=16000, n_mels=32, max_audio_seconds=1.0)
    bundle = KIND.build_tensors(root, m, cfg)
    meta = bundle.meta
    assert meta["hop_length"] == 160 and meta["n_fft"] == 512 and meta["n_mels"] == 32
    assert meta["sample_rate"] == 16000 and meta["classes"] == ["a", "b", "c"]
    assert len(meta["mean"]) == 32 and meta["data_version"] == dataset_version(root)[0]
    frames = 1 + 16000 // 160
    ids = bundle.sidecars["samples"]
    for split in ("train", "val", "test"):
        part = bundle.split(split)
        assert part["x"].shape == (meta["splits"][split], 32, frames)
        for sample, length, x in zip(ids[split], part["lengths"].tolist(), part["x"]):
            expected = frames if sample.startswith("c/") else 1 + 8000 // 160
            assert length == expected
            assert float(x[:, length:].abs().sum()) == 0.0 and float(x[:, :length].abs().sum()) > 0
    assert sum(meta["splits"].values()) == 24


def test_resampling_keeps_the_spectrum(tmp_path):
    """The same tone stored at 8, 16 and 44.1 kHz gives the same log-mel profile."""
    root = tmp_path / "ds"
    for label, rate in (("r8", 8000), ("r16", 16000), ("r44", 44100)):
        (root / label).mkdir(parents=True)
        for i in range(3):
            sf.write(root / label / f"{i}.wav", tone(1000, rate, 1.0, seed=i), rate)
    m = manifest_of(root)
    bundle = KIND.build_tensors(root, m, PreprocessConfig(sample_rate=16000, n_mels=40, max_audio_seconds=1.0))
    x = np.concatenate([bundle.split(s)["x"].numpy() for s in ("train", "val", "test")])
    y = np.concatenate([bundle.split(s)["y"].numpy() for s in ("train", "val", "test")])
    meta = bundle.meta
    log_mel = x * np.array(meta["std"])[None, :, None] + np.array(meta["mean"])[None, :, None]
    profiles = {c: log_mel[y == i][:, :, 5:-5].mean(axis=(0, 2)) for i, c in enumerate(meta["classes"])}
    peak = int(profiles["r16"].argmax())
    assert all(int(p.argmax()) == peak for p in profiles.values()), {c: int(p.argmax()) for c, p in profiles.items()}
    near = slice(peak - 1, peak + 2)  # the noise floor differs with the source rate; the tone must not
    for rate in ("r8", "r44"):
        assert np.abs(profiles[rate][near] - profiles["r16"][near]).max() < 0.3


def test_stereo_is_mixed_to_mono(tmp_path):
    path = tmp_path / "s.wav"
    left, right = tone(440, 16000, 0.1, seed=1), tone(660, 16000, 0.1, seed=2)
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = audio.load_clip(path, 16000, 16000)
    assert np.allclose(wave.numpy(), (left + right) / 2, atol=1e-6)


def test_bad_clips_are_named(tmp_path):
    root = make_clips(tmp_path / "ds", {"a": 4, "b": 4})
    whole = (root / "a" / "001.wav").read_bytes()
    (root / "a" / "001.wav").write_bytes(whole[: len(whole) // 2])  # data chunk cut short
    (root / "b" / "002.wav").write_bytes(whole[:20])  # header cut short
    sf.write(root / "b" / "003.wav", np.zeros(8000), 16000)  # silence
    m = manifest_of(root).set_index("path")
    assert "truncated" in m.loc["a/001.wav", "error"] and not m.loc["a/001.wav", "decodable"]
    assert not m.loc["b/002.wav", "decodable"] and m.loc["b/002.wav", "error"]
    failures = gx_failures(suite, manifest_of(root))
    assert failures["expect_column_values_to_be_in_set:decodable"] == ["a/001.wav", "b/002.wav"]
    assert failures["expect_column_values_to_be_between:peak"] == ["b/003.wav"]
    with pytest.raises(DatasetError, match=r"a/001\.wav.*truncated"):
        KIND.build_tensors(root, manifest_of(root), PreprocessConfig())


def test_layout_errors(tmp_path):
    root = make_clips(tmp_path / "ds", {"a": 2})
    (root / "a" / "song.mp3").write_bytes(b"ID3")
    with pytest.raises(DatasetError, match=r"a/song\.mp3.*'\.mp3'.*\.wav, \.flac, \.ogg"):
        manifest_of(root)
    (root / "a" / "song.mp3").unlink()
    (root / "b").mkdir()
    with pytest.raises(DatasetError, match=r"ds/b: class folder is empty"):
        manifest_of(root)
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetError, match=r"none: dataset folder holds no files"):
        manifest_of(tmp_path / "none")


def test_splits_are_stable_when_clips_are_added(tmp_path):
    root = make_clips(tmp_path / "ds", {"a": 15, "b": 15})
    before = dict(zip(manifest_of(root)["path"], manifest_of(root)["split"]))
    make_clips(root, {"c": 6}, seed=50)
    after = manifest_of(root)
    assert {p: s for p, s in zip(after["path"], after["split"]) if p in before} == before


def test_spoken_digits_are_deterministic_speech(tmp_path, monkeypatch):
    from unified_pipeline.datasets.samples.spoken_digits import WORDS, generate_spoken_digits

    monkeypatch.setattr(atomic.os, "fsync", lambda fd: None)  # durability is not under test here
    one = generate_spoken_digits(tmp_path / "one" / "spoken_digits", seed=0, per_class=3)
    two = generate_spoken_digits(tmp_path / "two" / "spoken_digits", seed=0, per_class=3)
    other = generate_spoken_digits(tmp_path / "three" / "spoken_digits", seed=1, per_class=3)
    assert dataset_version(one)[1] == dataset_version(two)[1]
    assert dataset_version(one)[0] != dataset_version(other)[0]
    m = manifest_of(one)
    assert len(m) == 30 and sorted(m["label"].unique()) == sorted(WORDS)
    assert (m["sample_rate"] == 22050).all() and (m["channels"] == 1).all()
    assert m["duration_s"].between(0.2, 1.5).all() and (m["peak"] > 0.25).all()
    assert gx_failures(suite, m) == {}
    # spoken words are louder than the noise floor they sit in
    data, rate = sf.read(one / "seven" / "seven_0000.wav")
    frame_rms = np.sqrt(np.mean(data[: len(data) // 256 * 256].reshape(-1, 256) ** 2, axis=1))
    assert frame_rms.max() > 3 * np.median(frame_rms[:4])


def test_prediction_features_equal_the_training_tensors(tmp_path):
    """A clip read for prediction gets the features training read from the shards, to float32
    rounding: the same float16 step, normalisation and zeroed padding."""
    import torch

    from unified_pipeline.models.audio_rnn import load_clips

    root = make_clips(tmp_path / "ds", {"a": 6, "b": 6}, rate=8000, seconds=0.6)
    bundle = KIND.build_tensors(root, manifest_of(root), PreprocessConfig(sample_rate=16000, n_mels=24,
                                                                           max_audio_seconds=1.0))
    part = bundle.split("train")
    paths = [root / rel for rel in bundle.sidecars["samples"]["train"]]
    x, lengths = load_clips(paths, bundle.meta)
    assert torch.equal(lengths, part["lengths"])
    width = x.shape[-1]
    assert torch.allclose(x, part["x"][..., :width], atol=1e-5, rtol=0)
