"""Text kind: CSV/JSONL manifest, flagged records, bad files, char tensors, langid sample data."""
from __future__ import annotations

import json

import pytest

from unified_pipeline import hashing
from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.datasets.samples.langid_text import generate_langid
from unified_pipeline.datasets.text import KIND
from unified_pipeline.errors import DatasetError
from unified_pipeline.quality.runner import validate


def manifest(root):
    return KIND.build_manifest(root, hashing.dataset_version(root)[1])


def write_csv(root, name, lines):
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def good_rows(n=30):
    return ["text,label"] + [f"{w}{i},{lab}" for i in range(n) for w, lab in (("hello", "en"), ("hallo", "de"))]


def test_csv_and_jsonl_manifest_and_tensors(tmp_path):
    root = tmp_path / "t"
    write_csv(root, "a.csv", good_rows())
    (root / "b.jsonl").write_text(json.dumps({"text": "grüß dich", "label": "de"}) + "\n\n"
                                  + json.dumps({"text": "hi there", "label": "en"}) + "\n", encoding="utf-8")
    assert KIND.detect(root)
    m = manifest(root)
    assert len(m) == 62
    assert list(m[m.path == "b.jsonl"]["row"]) == [1, 3]  # JSONL rows are line numbers
    assert list(m[m.path == "a.csv"]["row"])[:2] == [1, 2]
    assert validate("text", m).success
    bundle = KIND.build_tensors(root, m, PreprocessConfig(max_text_len=12))
    n = sum(bundle.meta["splits"].values())
    assert n == 62 and bundle.meta["classes"] == ["de", "en"] and bundle.meta["tokenizer"] == "char"
    assert bundle.meta["vocab"][:2] == ["<pad>", "<unk>"]
    x = bundle.tensors["train/x"]
    assert x.shape[1] == 12 and str(x.dtype) == "torch.int64"
    assert sorted(bundle.sidecars["texts"]) == ["test", "train", "val"]
    train_texts = bundle.sidecars["texts"]["train"]
    vocab = bundle.meta["vocab"]
    assert "".join(vocab[i] for i in x[0].tolist() if i > 0) == train_texts[0][:12]
    train_chars = set("".join(train_texts))
    assert set(vocab[2:]) == train_chars  # vocabulary from train only


def test_split_stable_when_row_added(tmp_path):
    root = tmp_path / "t"
    write_csv(root, "a.csv", good_rows())
    before = dict(zip(manifest(root)["text"], manifest(root)["split"]))
    write_csv(root, "a.csv", good_rows() + ["bonjour,fr"])
    after = dict(zip(manifest(root)["text"], manifest(root)["split"]))
    assert all(after[t] == s for t, s in before.items())


def test_flagged_rows_named_by_suite(tmp_path):
    root = tmp_path / "t"
    write_csv(root, "a.csv", good_rows() + [",en", "orphan,", "hello3,de"])
    m = manifest(root)
    report = validate("text", m)
    assert not report.success
    failed = {r["expectation"] + ":" + str(r["column"]): r for r in report.failures}
    assert {"path": "a.csv", "row": 61} in failed["expect_column_values_to_be_between:length"]["offenders"]
    assert failed["expect_column_values_to_not_be_null:label"]["offenders"] == [{"path": "a.csv", "row": 62}]
    conflict = failed["expect_column_values_to_be_in_set:label_conflict"]["offenders"]
    assert {"path": "a.csv", "row": 63} in conflict and {"path": "a.csv", "row": 7} in conflict
    assert "a.csv:62" in report.summary()


def test_malformed_jsonl_line_flagged(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "d.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": broken\n', encoding="utf-8")
    m = manifest(root)
    bad = m[~m.decodable]
    assert list(bad["row"]) == [2] and "line 2" in bad["error"].iloc[0]


def test_bad_files_raise(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "a.csv").write_bytes("text,label\nok,en\n".encode() + b"caf\xe9,fr\n")
    with pytest.raises(DatasetError, match=r"a\.csv: line 3 \(CSV data row 2\): not UTF-8 \(invalid byte 0xe9 at column 4\)"):
        manifest(root)
    (root / "a.csv").write_text("sentence,label\nx,y\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"a\.csv.*missing column.*text.*found.*sentence"):
        manifest(root)
    assert not KIND.detect(root)
    (root / "a.csv").unlink()
    (root / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="unknown file type"):
        manifest(root)


def test_langid_generator_deterministic(tmp_path):
    a = generate_langid(tmp_path / "a", seed=3, max_per_locale=20, locales=("en", "de", "fi"))
    b = generate_langid(tmp_path / "b", seed=3, max_per_locale=20, locales=("en", "de", "fi"))
    assert (a / "data.csv").read_bytes() == (b / "data.csv").read_bytes()
    m = manifest(a)
    assert len(m) == 60 and sorted(m.label.unique()) == ["de", "en", "fi"]
    assert validate("text", m).success


def test_auto_length_covers_most_texts_and_reports_what_it_cuts(tmp_path):
    root = tmp_path / "t"
    # 300 short messages (10-29 characters) and 3 long ones (300): the long tail must not set the length.
    rows = ["text,label"] + [f"{'x' * (10 + i % 20)}{i},{'a' if i % 2 else 'b'}" for i in range(300)]
    rows += [f"{'y' * 300}{i},a" for i in range(3)]
    write_csv(root, "a.csv", rows)
    m = manifest(root)
    facts = KIND.manifest_facts(m, PreprocessConfig())
    train = m[m.split == "train"]["length"]
    assert facts["max_text_len"] >= int(train.quantile(0.9)) and facts["max_text_len"] < 300
    assert facts["texts_cut"] == int((m["length"] > facts["max_text_len"]).sum()) >= 3
    assert facts["longest_text"] == 301 and "98th percentile" in facts["max_text_len_choice"]
    bundle = KIND.build_tensors(root, m, PreprocessConfig())
    assert bundle.meta["max_len"] == facts["max_text_len"] == bundle.tensors["train/x"].shape[1]
    assert bundle.meta["facts"] == facts
    fixed = KIND.build_tensors(root, m, PreprocessConfig(max_text_len=16))
    assert fixed.meta["max_len"] == 16 and fixed.meta["facts"]["texts_cut"] == int((m["length"] > 16).sum())
    with pytest.raises(DatasetError, match="max_text_len must be a positive number"):
        KIND.build_tensors(root, m, PreprocessConfig(max_text_len="long"))
