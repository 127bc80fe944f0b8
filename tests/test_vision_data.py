"""Vision lane: layout checks, manifest, tensors, stable splits, quality suite, sample digits."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unified_pipeline import atomic
from unified_pipeline.datasets import vision
from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.errors import DatasetError
from unified_pipeline.hashing import dataset_version
from unified_pipeline.quality import vision as suite

KIND = vision.KIND


def make_images(root: Path, counts: dict[str, int], size=(8, 8), mode="L", seed=0, ext="png") -> Path:
    rng = np.random.default_rng(seed)
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = size if mode == "L" else (*size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / label / f"{i:03d}.{ext}")
    return root


def manifest_of(root: Path):
    return KIND.build_manifest(root, dataset_version(root)[1])


def gx_failures(kind_suite, manifest, cfg=None) -> dict[str, list[str]]:
    """Run the suite in an ephemeral GX context; failing expectation -> offending paths."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = {"globally": False}
    batch = ctx.data_sources.add_pandas("m").add_dataframe_asset("a").add_batch_definition_whole_dataframe("b")
    gx_suite = ctx.suites.add(gx.ExpectationSuite(name="s", expectations=kind_suite.expectations(manifest, cfg)))
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="v", data=batch, suite=gx_suite))
    result = vd.run(
        batch_parameters={"dataframe": kind_suite.prepare(manifest)},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]},
    )
    out = {}
    for r in result.results:
        if not r.success:
            key = f"{r.expectation_config.type}:{r.expectation_config.kwargs.get('column')}"
            out[key] = sorted(row["path"] for row in r.result.get("unexpected_index_list") or [])
    return out


def test_detect_is_cheap_and_specific(tmp_path):
    make_images(tmp_path / "imgs", {"a": 1})
    (tmp_path / "clips" / "a").mkdir(parents=True)
    (tmp_path / "clips" / "a" / "x.wav").write_bytes(b"RIFF")
    code = (
        "import sys; from pathlib import Path; from unified_pipeline.datasets import vision, audio;"
        "import unified_pipeline.quality.vision, unified_pipeline.quality.audio;"
        f"r = Path({str(tmp_path)!r});"
        "print(vision.KIND.detect(r / 'imgs'), vision.KIND.detect(r / 'clips'), audio.KIND.detect(r / 'clips'),"
        " 'torch' in sys.modules, 'great_expectations' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "True", "False", "False"]


def test_manifest_columns_and_facts(tmp_path):
    root = make_images(tmp_path / "ds", {"cat": 2, "dog": 3}, size=(6, 9))
    m = manifest_of(root)
    assert list(m.columns) == vision.MANIFEST_COLUMNS
    assert len(m) == 5 and m["decodable"].all() and m["error"].isna().all()
    assert set(m["label"]) == {"cat", "dog"} and m["path"].iloc[0] == "cat/000.png"
    assert (m["width"] == 9).all() and (m["height"] == 6).all() and (m["channels"] == 1).all()
    assert (m["format"] == "PNG").all() and (m["size"] == [(root / p).stat().st_size for p in m["path"]]).all()
    assert gx_failures(suite, m) == {}


def test_tensors_shapes_meta_and_normalisation(tmp_path):
    root = make_images(tmp_path / "ds", {"a": 12, "b": 12}, size=(6, 9))
    m = manifest_of(root)
    bundle = KIND.build_tensors(root, m, PreprocessConfig())
    meta = bundle.meta
    assert meta["kind"] == "vision" and meta["dataset"] == "ds" and meta["classes"] == ["a", "b"]
    assert meta["channels"] == 1 and meta["image_size"] == [6, 9]
    assert meta["data_version"] == dataset_version(root)[0]
    assert sum(meta["splits"].values()) == 24
    train = bundle.split("train")
    assert train["x"].shape == (meta["splits"]["train"], 1, 6, 9) and train["x"].dtype.is_floating_point
    assert abs(float(train["x"].mean())) < 1e-4 and abs(float(train["x"].std(unbiased=False)) - 1) < 1e-3
    # the stored mean/std undo the normalisation back to pixel/255
    first = m.index[m["path"] == bundle.sidecars["samples"]["train"][0]][0]
    raw = np.asarray(Image.open(root / m["path"][first]), dtype=np.float32) / 255
    restored = train["x"][0, 0].numpy() * meta["std"][0] + meta["mean"][0]
    assert np.allclose(restored, raw, atol=1e-5)
    saved = bundle.save(tmp_path / "out")
    again = TensorBundle.load(saved)
    assert again.meta == meta and set(again.tensors) == set(bundle.tensors)


def test_mixed_modes_become_rgb_and_image_size_resizes(tmp_path):
    root = make_images(tmp_path / "ds", {"a": 3}, size=(8, 8), mode="L")
    make_images(root, {"b": 3}, size=(10, 12), mode="RGB", ext="jpg")
    m = manifest_of(root)
    with pytest.raises(DatasetError, match=r"b/000\.jpg.*10x12"):
        KIND.build_tensors(root, m, PreprocessConfig())
    assert "expect_column_values_to_be_in_set:image_shape" in gx_failures(suite, m, {"image_size": 0})
    assert "expect_column_values_to_be_in_set:image_shape" not in gx_failures(suite, m, {"image_size": 5})
    bundle = KIND.build_tensors(root, m, PreprocessConfig(image_size=5))
    assert bundle.meta["channels"] == 3 and bundle.meta["image_size"] == [5, 5]
    assert all(t.shape[1:] == (3, 5, 5) for k, t in bundle.tensors.items() if k.endswith("/x"))


def test_splits_are_stable_when_files_are_added(tmp_path):
    root = make_images(tmp_path / "ds", {"a": 20, "b": 20})
    before = dict(zip(manifest_of(root)["path"], manifest_of(root)["split"]))
    make_images(root, {"c": 5}, seed=1)
    after = manifest_of(root)
    assert {p: s for p, s in zip(after["path"], after["split"]) if p in before} == before
    cfg = PreprocessConfig(seed=3)
    ids = KIND.build_tensors(root, manifest_of(root), cfg).sidecars["samples"]
    make_images(root, {"d": 5}, seed=2)
    ids_after = KIND.build_tensors(root, manifest_of(root), cfg).sidecars["samples"]
    for split in ids:
        assert set(ids[split]) <= set(ids_after[split])
    assert set(KIND.build_tensors(root, manifest_of(root), PreprocessConfig(seed=4)).sidecars["samples"]["train"]) != set(
        ids_after["train"]
    )


def test_corrupt_image_is_named_by_manifest_suite_and_tensors(tmp_path):
    root = make_images(tmp_path / "ds", {"a": 4, "b": 4})
    (root / "b" / "001.png").write_bytes((root / "b" / "001.png").read_bytes()[:40])
    m = manifest_of(root)
    bad = m[~m["decodable"]]
    assert list(bad["path"]) == ["b/001.png"] and bad["error"].iloc[0]
    failures = gx_failures(suite, m)
    assert failures["expect_column_values_to_be_in_set:decodable"] == ["b/001.png"]
    with pytest.raises(DatasetError, match=r"b/001\.png"):
        KIND.build_tensors(root, m, PreprocessConfig())


def test_suite_flags_conflicting_labels_and_imbalance(tmp_path):
    root = make_images(tmp_path / "ds", {"a": 30, "b": 30, "c": 2})
    (root / "b" / "dup.png").write_bytes((root / "a" / "000.png").read_bytes())
    failures = gx_failures(suite, manifest_of(root))
    assert failures["expect_column_values_to_be_in_set:label_conflict"] == ["a/000.png", "b/dup.png"]
    assert failures["expect_column_values_to_be_between:class_share"] == ["c/000.png", "c/001.png"]


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, r"holds no files"),
        ({"a/x.png": b"", "top.png": b""}, r"top\.png.*top level"),
        ({"a/x.png": b"", "empty/": None}, r"empty.*class folder is empty"),
        ({"a/x.png": b"", "a/notes.txt": b"hi"}, r"a/notes\.txt.*unknown file type '\.txt'.*\.png, \.jpg"),
    ],
)
def test_layout_errors_name_the_culprit(tmp_path, layout, message):
    root = tmp_path / "ds"
    root.mkdir()
    for rel, data in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            (root / rel).mkdir(exist_ok=True)
        else:
            (root / rel).write_bytes(data)
    with pytest.raises(DatasetError, match=message):
        manifest_of(root)


def test_digit_samples_are_the_sklearn_digits_and_deterministic(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.setattr(atomic.os, "fsync", lambda fd: None)  # durability is not under test here
    (first,) = KIND.generate_samples(tmp_path / "one", seed=0)
    (second,) = KIND.generate_samples(tmp_path / "two", seed=0)
    assert first.name == "digits" and dataset_version(first)[0] == dataset_version(second)[0]
    digits = load_digits()
    m = manifest_of(first)
    assert len(m) == 1797 and sorted(m["label"].unique()) == [str(d) for d in range(10)]
    assert (m["width"] == 8).all() and (m["height"] == 8).all() and (m["mode"] == "L").all()
    img = np.asarray(Image.open(first / "7" / "0007.png"))
    assert digits.target[7] == 7 and np.array_equal(img, np.rint(digits.images[7] * 255 / 16))
    assert gx_failures(suite, m) == {}
    assert not list(first.parent.glob(".*partial"))
    assert KIND.generate_samples(tmp_path / "one", seed=5) == [first]  # existing folder is kept
