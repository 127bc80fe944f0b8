"""Memory kind: DeepParameter records to manifest and tensors; broken lines and fields named."""
from __future__ import annotations

import json

import pytest

from unified_pipeline import hashing
from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.datasets.memory import KIND
from unified_pipeline.datasets.samples.memory_records import generate_memory_records, memory_records
from unified_pipeline.errors import DatasetError
from unified_pipeline.quality.runner import validate


def manifest(root):
    return KIND.build_manifest(root, hashing.dataset_version(root)[1])


def write(root, lines):
    root.mkdir(parents=True, exist_ok=True)
    (root / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_manifest_and_tensors(tmp_path):
    root = tmp_path / "m"
    records = memory_records(seed=0, n=60)
    write(root, [json.dumps(r) for r in records])
    assert KIND.detect(root)
    m = manifest(root)
    assert len(m) == 60 and m.decodable.all()
    assert validate("memory", m).success
    b = KIND.build_tensors(root, m, PreprocessConfig())
    n = b.meta["splits"]["train"]
    dims = b.meta["modality_dims"]
    assert dims == {"text_confidence": 1, "audio_features": 8, "image_features": 12}
    assert b.tensors["train/gist"].shape == (n, b.meta["max_gist_len"])
    assert b.tensors["train/keywords"].shape == (n, len(b.meta["keyword_vocab"]))
    assert b.tensors["train/relations"].shape == (n, b.meta["max_relations"], 3)
    assert b.tensors["train/modalities"].shape == (n, 21)
    assert b.tensors["train/feedback"].shape == (n, 2)
    assert sum(len(v) for v in b.sidecars["records"].values()) == 60
    first = b.sidecars["records"]["train"][0]
    rec = next(r for r in records if r["source_memory_id"] == first)
    vocab = b.meta["vocab"]
    assert " ".join(vocab[i] for i in b.tensors["train/gist"][0].tolist() if i) == rec["base_gist"]["summary"].lower().replace(",", "")
    assert b.tensors["train/modalities"][0, 0].item() == pytest.approx(rec["modalities"]["text_confidence"])


def test_split_stable_when_record_added(tmp_path):
    root = tmp_path / "m"
    records = memory_records(seed=0, n=30)
    write(root, [json.dumps(r) for r in records[:20]])
    before = dict(zip(manifest(root).memory_id, manifest(root).split))
    write(root, [json.dumps(r) for r in records])
    after = dict(zip(manifest(root).memory_id, manifest(root).split))
    assert all(after[k] == v for k, v in before.items())


def test_broken_lines_and_fields_are_named(tmp_path):
    root = tmp_path / "m"
    records = memory_records(seed=0, n=20)
    del records[4]["action_feedback"]["reward"]
    records[6]["modalities"]["audio_features"] = [0.1, 0.2]
    lines = [json.dumps(r) for r in records]
    lines[2] = lines[2][:40]
    write(root, lines)
    m = manifest(root)
    bad = m[~m.decodable]
    assert list(bad.row) == [3, 5]
    assert "line 3" in bad.error.iloc[0] and "action_feedback.reward missing" in bad.error.iloc[1]
    report = validate("memory", m)
    failed = {r["column"]: r for r in report.failures}
    assert failed["decodable"]["offenders"] == [{"path": "records.jsonl", "row": 3}, {"path": "records.jsonl", "row": 5}]
    assert failed["audio_dim_ok"]["offenders"] == [{"path": "records.jsonl", "row": 7}]
    with pytest.raises(DatasetError, match="bad record"):
        KIND.build_tensors(root, m, PreprocessConfig())


def test_unknown_layout(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "records.json").write_text("[]")
    assert not KIND.detect(root)
    with pytest.raises(DatasetError, match="unknown file type"):
        manifest(root)


def test_generator_deterministic(tmp_path):
    a = generate_memory_records(tmp_path / "a", seed=5, n=40)
    b = generate_memory_records(tmp_path / "b", seed=5, n=40)
    assert (a / "records.jsonl").read_bytes() == (b / "records.jsonl").read_bytes()
    c = generate_memory_records(tmp_path / "c", seed=6, n=40)
    assert (a / "records.jsonl").read_bytes() != (c / "records.jsonl").read_bytes()
