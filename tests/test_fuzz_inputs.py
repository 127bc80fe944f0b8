"""Malformed raw data and presets: every kind either builds or fails with an error that names the file, row or field."""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unified_pipeline.datasets import get_kind
from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.errors import ConfigError, DatasetError
from unified_pipeline.hashing import dataset_version
from unified_pipeline.presets import load_preset
from unified_pipeline.quality import runner

FUZZ = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CFG = PreprocessConfig(sample_rate=8000, max_audio_seconds=0.2, n_mels=8, max_text_len=16)


def _check(kind: str, ds: Path) -> None:
    """build_manifest (+ build_tensors when every row decodes): success or a DatasetError naming the place."""
    k = get_kind(kind)
    _version, files = dataset_version(ds)
    try:
        manifest = k.build_manifest(ds, files)
    except DatasetError as exc:
        assert str(ds) in str(exc) or any(rel in str(exc) for rel in files), str(exc)
        return
    assert isinstance(manifest, pd.DataFrame) and len(manifest) > 0
    bad = manifest[~manifest["decodable"].astype(bool)]
    for _, row in bad.iterrows():  # each broken sample is named, with the reason
        assert row["path"] in files and isinstance(row["error"], str) and row["error"], row.to_dict()
    if len(bad) == 0:
        try:
            bundle = k.build_tensors(ds, manifest, CFG)
        except DatasetError as exc:
            assert str(ds) in str(exc) or any(rel in str(exc) for rel in files), str(exc)
        else:
            assert bundle.meta["kind"] == kind


def _dataset(tmp: str, name: str = "fuzzed") -> Path:
    ds = Path(tmp) / name
    ds.mkdir()
    return ds


# ---------------------------------------------------------------- binary files: images and clips

def _png(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _wav(freq: float, seconds: float = 0.1) -> bytes:
    import soundfile as sf

    t = np.arange(int(8000 * seconds)) / 8000
    buf = io.BytesIO()
    sf.write(buf, (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _mangle(data: bytes, how: str, cut: int, flips: list[int], noise: bytes) -> bytes:
    if how == "random":
        return noise
    if how == "truncate":
        return data[: cut % max(len(data), 1)]
    if how == "flip":
        out = bytearray(data)
        for f in flips:
            out[f % len(out)] ^= 0xFF
        return bytes(out)
    return data[:44] + noise  # header kept, body replaced


MANGLE = st.tuples(st.sampled_from(["random", "truncate", "flip", "splice"]), st.integers(0, 4000),
                   st.lists(st.integers(0, 4000), min_size=1, max_size=6), st.binary(max_size=300))


@FUZZ
@given(MANGLE)
def test_fuzzed_images(mangle):
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(tmp)
        for label, value in (("a", 30), ("b", 200)):
            (ds / label).mkdir()
            (ds / label / "ok.png").write_bytes(_png(value))
        (ds / "a" / "fuzzed.png").write_bytes(_mangle(_png(90), *mangle))
        _check("vision", ds)


@FUZZ
@given(MANGLE)
def test_fuzzed_audio_clips(mangle):
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(tmp)
        for label, freq in (("low", 300.0), ("high", 1500.0)):
            (ds / label).mkdir()
            (ds / label / "ok.wav").write_bytes(_wav(freq))
        (ds / "low" / "fuzzed.wav").write_bytes(_mangle(_wav(400.0), *mangle))
        _check("audio", ds)


# ---------------------------------------------------------------- CSV kinds

CELL = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e309", "0", "1", "-0.5", " 2 ", "x", "\"", ",", "\n"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _csv(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _encode(text: str, bad_bytes: bytes | None) -> bytes:
    data = text.encode("utf-8")
    return data if bad_bytes is None else data[: len(data) // 2] + bad_bytes + data[len(data) // 2:]


NON_UTF8 = st.one_of(st.none(), st.sampled_from([b"\xff", b"\xc3(", b"\xe9t\xe9", b"\x80\x80"]))


@FUZZ
@given(st.sampled_from([["text", "label"], ["label", "text", "extra"], ["text"], ["txt", "label"], ["text", "label", "text"]]),
       st.lists(st.lists(CELL, min_size=0, max_size=4), min_size=0, max_size=12), NON_UTF8)
def test_fuzzed_text_csv(header, rows, bad_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(tmp)
        (ds / "data.csv").write_bytes(_encode(_csv(header, rows), bad_bytes))
        _check("text", ds)


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=8)
TEXT_RECORD = st.fixed_dictionaries({}, optional={"text": JSON | st.text(max_size=20), "label": JSON | st.sampled_from(["a", "b"])})


@FUZZ
@given(st.lists(st.one_of(TEXT_RECORD.map(json.dumps), JSON.map(json.dumps), st.text(max_size=20)), min_size=0, max_size=10),
       NON_UTF8)
def test_fuzzed_text_jsonl(lines, bad_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(tmp)
        (ds / "data.jsonl").write_bytes(_encode("\n".join(lines) + "\n", bad_bytes))
        _check("text", ds)


@FUZZ
@given(st.sampled_from([
    ["state_0", "action_0", "next_state_0", "reward"],
    ["episode", "state_0", "state_1", "action_0", "next_state_0", "next_state_1", "reward"],
    ["state_0", "action_0", "next_state_0"],
    ["state_0", "state_1", "action_0", "next_state_0", "reward"],
]), st.lists(st.lists(CELL, min_size=0, max_size=8), min_size=0, max_size=12), NON_UTF8)
def test_fuzzed_transitions(header, rows, bad_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(tmp)
        (ds / "rollouts.csv").write_bytes(_encode(_csv(header, rows), bad_bytes))
        _check("transitions", ds)


@FUZZ
@given(st.lists(st.text(min_size=0, max_size=4), min_size=0, max_size=4),
       st.lists(st.lists(CELL, min_size=0, max_size=5), min_size=0, max_size=12),
       st.one_of(st.none(), st.lists(st.lists(st.sampled_from(["0", "1", "2", "x", ""]), max_size=4), max_size=4)),
       NON_UTF8)
def test_fuzzed_causal(header, rows, adjacency, bad_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(tmp)
        (ds / "data.csv").write_bytes(_encode(_csv(header, rows), bad_bytes))
        if adjacency is not None:
            (ds / "adjacency.csv").write_text(_csv(header, adjacency), encoding="utf-8")
        _check("causal", ds)


# ---------------------------------------------------------------- memory records

def _record(i: int) -> dict:
    return {
        "source_memory_id": f"mem_{i}", "timestamp": "2026-01-01T00:00:00Z",
        "base_gist": {"summary": f"the apple met item {i}", "keywords": ["apple"], "original_length": 20},
        "relational_context": {"entities": ["apple"], "relations": [{"subject": "apple", "verb": "meets", "object": "x"}]},
        "modalities": {"text_confidence": 0.9, "audio_features": [0.1, 0.2], "image_features": [0.3]},
        "action_feedback": {"action": "recall", "reward": 0.5, "success": True},
    }


PATHS = ["source_memory_id", "base_gist", "base_gist.summary", "base_gist.keywords", "relational_context.entities",
         "relational_context.relations", "modalities.text_confidence", "modalities.audio_features",
         "modalities.image_features", "action_feedback.reward", "action_feedback.success", "action_feedback.action"]
MUTATION = st.tuples(st.sampled_from(PATHS), st.one_of(st.just("<delete>"), JSON, st.floats()))


def _mutate(rec: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    cur = rec
    for p in parents:
        cur = cur.get(p) if isinstance(cur, dict) else None
    if not isinstance(cur, dict):  # an earlier mutation replaced the parent
        return rec
    if value == "<delete>":
        cur.pop(last, None)
    else:
        cur[last] = value
    return rec


@FUZZ
@given(st.lists(st.lists(MUTATION, max_size=3), min_size=1, max_size=8), st.lists(JSON.map(json.dumps), max_size=2),
       NON_UTF8)
def test_fuzzed_memory_records(mutations, junk_lines, bad_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        ds = _dataset(tmp)
        lines = []
        for i, muts in enumerate(mutations):
            rec = _record(i)
            for dotted, value in muts:
                _mutate(rec, dotted, value)
            lines.append(json.dumps(rec, allow_nan=True))
        lines += junk_lines
        (ds / "records.jsonl").write_bytes(_encode("\n".join(lines) + "\n", bad_bytes))
        _check("memory", ds)


# ---------------------------------------------------------------- presets

PRESET_VALUE = st.one_of(JSON, st.integers(-10, 10 ** 7), st.floats(allow_nan=True, allow_infinity=True),
                         st.sampled_from(["adamw", "sgd", "text_service", "all_models", "nope", ""]))
PRESET_KEYS = [
    ("training_scenarios", "s", "epochs"), ("training_scenarios", "s", "batch_size"),
    ("training_scenarios", "s", "learning_rate"), ("training_scenarios", "s", "target_models"),
    ("training_scenarios", "s", "datasets"), ("training_scenarios", "s", "checkpoint_interval"),
    ("training_scenarios", "s"), ("training_scenarios",), ("training_configuration", "optimizer"),
    ("training_configuration", "learning_rate"), ("training_configuration", "early_stopping_patience"),
    ("training_configuration",), ("hardware_configuration", "mixed_precision"),
    ("model_specific_presets", "text_service"), ("model_specific_presets", "text_service", "epochs"),
    ("model_specific_presets", "text_service", "batch_size"), ("model_specific_presets", "text_service", "precision"),
    ("data_preprocessing",), ("preset_name",),
]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PRESET_KEYS), PRESET_VALUE), min_size=1, max_size=4))
def test_fuzzed_presets(changes):
    import warnings

    from unified_pipeline.training.trainer import TrainerConfig

    data = {"preset_name": "p", "training_scenarios": {"s": {"epochs": 2}}, "model_specific_presets": {"text_service": {}}}
    for keys, value in changes:
        cur = data
        for k in keys[:-1]:
            if not isinstance(cur.get(k), dict):
                cur[k] = {}
            cur = cur[k]
        cur[keys[-1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preset.json"
        path.write_text(json.dumps(data, allow_nan=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                preset = load_preset(path)
            except ConfigError as exc:
                assert str(path) in str(exc)
                return
        for scenario in preset.training_scenarios:
            for model in preset.available_models_for(scenario):
                try:
                    TrainerConfig.from_hparams(preset.hparams(scenario, model))
                except ConfigError as exc:
                    assert "setting" in str(exc)


def _one_broken_sample(kind: str, ds: Path) -> str:
    """A small dataset of `kind` with one sample that cannot be decoded; returns where it is."""
    if kind == "vision":
        for label, value in (("a", 30), ("b", 200)):
            (ds / label).mkdir()
            (ds / label / "ok.png").write_bytes(_png(value))
        (ds / "a" / "broken.png").write_bytes(_png(90)[:30])
        return "a/broken.png"
    if kind == "audio":
        for label, freq in (("low", 300.0), ("high", 1500.0)):
            (ds / label).mkdir()
            (ds / label / "ok.wav").write_bytes(_wav(freq))
        (ds / "low" / "broken.wav").write_bytes(b"RIFF" + bytes(40))
        return "low/broken.wav"
    if kind == "text":
        lines = [json.dumps({"text": f"w{i}", "label": "ab"[i % 2]}) for i in range(6)] + ["{broken"]
        (ds / "data.jsonl").write_text("\n".join(lines) + "\n")
        return "line 7"
    records = [_record(i) for i in range(6)]
    del records[3]["base_gist"]
    (ds / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return "line 4"


@pytest.mark.parametrize("kind", ["vision", "audio", "text", "memory"])
def test_gx_suite_fails_on_a_broken_sample_and_names_it(kind, tmp_path):
    """The blocking Great Expectations suite fails on a manifest with an undecodable sample."""
    ds = _dataset(str(tmp_path))
    where = _one_broken_sample(kind, ds)
    _check(kind, ds)
    _version, files = dataset_version(ds)
    manifest = get_kind(kind).build_manifest(ds, files)
    bad = manifest[~manifest["decodable"].astype(bool)]
    assert len(bad) == 1 and where in f"{bad['path'].iloc[0]} {bad['error'].iloc[0]}"
    report = runner.validate(kind, manifest, {})
    assert not report.success and str(bad["path"].iloc[0]) in report.summary()
