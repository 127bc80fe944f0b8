"""Manifest files: the columns document beside the lines, and the next build of a folder taking
an unchanged file's row from the folder's previous manifest."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from PIL import Image

from unified_pipeline import manifest_files
from unified_pipeline.datasets import DatasetRef, class_folders
from unified_pipeline.datasets.base import PreprocessConfig
from unified_pipeline.datasets.splits import assign_splits, manifest_splits, split_settings
from unified_pipeline.hashing import HashCache, dataset_version
from unified_pipeline.manifest_files import columns_path, read_manifest, write_manifest


def _from_lines(path, columns=None) -> pd.DataFrame:
    """The manifest parsed from its lines file alone."""
    values = manifest_files._read_lines(path, columns)
    return pd.DataFrame(values, columns=list(columns or values))


def _mixed() -> pd.DataFrame:
    df = pd.DataFrame({
        "path": ["a/1.png", "a/2.png", "b/3.png"], "decodable": [True, False, True],
        "error": [None, "OSError: truncated", None], "width": pd.array([8, None, 8], dtype="Int64"),
        "peak": [0.5, float("nan"), 1.0], "note": ["x", np.nan, "é"],
    })
    df.attrs["facts_reader"] = "r1"
    return df


def test_the_columns_document_gives_back_what_the_lines_hold(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, _mixed(), record={"split_seed": 3}, extra={"mtime_ns": [1, 2, 3]})
    assert columns_path(path).is_file()
    from_lines = _from_lines(path)
    from_columns = read_manifest(path)
    assert_frame_equal(from_columns, from_lines)
    assert from_columns.attrs["split_seed"] == 3 and "mtime_ns" not in from_columns
    assert_frame_equal(read_manifest(path, ("error", "path")), _from_lines(path, ("error", "path")))


def test_a_columns_document_that_is_not_the_lines_files_is_ignored(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, _mixed())
    other = _mixed().assign(path=["x/1.png", "x/2.png", "x/3.png"])
    other.to_json(path, orient="records", lines=True)  # lines rewritten without their columns
    assert read_manifest(path)["path"].tolist() == ["x/1.png", "x/2.png", "x/3.png"]
    write_manifest(path, _mixed())
    text = columns_path(path).read_text()
    columns_path(path).write_text(text[: len(text) // 2])  # cut short
    assert read_manifest(path)["path"].tolist() == ["a/1.png", "a/2.png", "b/3.png"]


def _images(root, per_class=6, age_s=0):
    """Two classes of images, last modified `age_s` ago."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = root / label / f"{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
            if age_s:
                os.utime(path, (path.stat().st_atime - age_s, path.stat().st_mtime - age_s))
    return root


def _spy(monkeypatch):
    """Files each build reads (decodes) and paths it looks up in the hash cache."""
    read, looked_up = [], []
    real_decode, real_lookup = class_folders.decode_all, HashCache.lookup
    monkeypatch.setattr(class_folders, "decode_all", lambda fn, r, rels, extra: read.append(sorted(rels)) or
                        real_decode(fn, r, rels, extra, workers=1))
    monkeypatch.setattr(HashCache, "lookup", lambda self, paths, *a, **k: looked_up.append(
        sorted(os.path.basename(str(p)) for p in paths)) or real_lookup(self, paths, *a, **k))
    return read, looked_up


@pytest.mark.parametrize("in_place", [False, True])  # (in place: the same paths, compared as arrays)
def test_a_rebuild_reads_only_changed_files_and_equals_a_build_from_scratch(home, monkeypatch, in_place):
    from unified_pipeline.assets.data_assets import build_manifest

    root = _images(home.parent / "raw" / "ds", age_s=60)  # (files written just before a scan are read again)
    ref = DatasetRef("ds", "vision", root)
    monkeypatch.setattr(manifest_files, "LINES_BLOCK", 5)  # lines written (and copied) in several blocks
    build_manifest(ref)
    read, looked_up = _spy(monkeypatch)
    Image.fromarray(np.full((8, 8, 3), 7, dtype=np.uint8)).save(root / "a" / "001.png")  # changed
    os.utime(root / "b" / "002.png", ns=(1, 1))  # touched: same bytes, another mtime
    if not in_place:
        (root / "b" / "004.png").unlink()
        Image.fromarray(np.full((8, 8, 3), 9, dtype=np.uint8)).save(root / "b" / "new.png")
    said = []
    version, manifest, path = build_manifest(ref, log=said.append)
    kept = 10 if in_place else 9
    assert any(f"ds: {kept} of 12 files unchanged since the previous manifest" in line for line in said), said
    # (a touched file is read again to hash it)
    assert read == [["a/001.png", "b/002.png", *([] if in_place else ["b/new.png"])]]
    # by name, and only the touched one: the others changed after the previous scan (no cache can
    # know them) or not at all
    assert looked_up == [["002.png"]]
    assert_frame_equal(read_manifest(path), _from_lines(path))
    lines, columns = path.read_bytes(), _column_lines(path)  # unchanged rows' lines copied from the previous file
    shutil.rmtree(home / "manifests")  # from scratch: no previous manifest
    version2, scratch, path2 = build_manifest(ref)
    assert version == version2 == dataset_version(root)[0]
    assert_frame_equal(manifest, scratch)
    assert path2.read_bytes() == lines
    assert _column_lines(path2) == columns  # (columns whose values held are copied as text)


def _column_lines(path) -> list[str]:
    """The columns document's lines after its head (which records when the folder was scanned)."""
    return columns_path(path).read_text(encoding="utf-8").splitlines()[1:]


def test_another_folder_of_the_same_name_is_not_taken_for_the_previous_one(home):
    from unified_pipeline.assets.data_assets import build_manifest

    first = _images(home.parent / "raw" / "ds")
    build_manifest(DatasetRef("ds", "vision", first))
    copy = home.parent / "elsewhere" / "ds"
    shutil.copytree(first, copy)  # same paths, sizes and mtimes
    target, stat = copy / "a" / "000.png", (copy / "a" / "000.png").stat()
    Image.fromarray(np.full((8, 8, 3), 1, dtype=np.uint8)).save(target)
    target.write_bytes(target.read_bytes().ljust(stat.st_size, b"\0")[: stat.st_size])  # same size...
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...and mtime as the first folder's file
    version, manifest, _ = build_manifest(DatasetRef("ds", "vision", copy))
    assert version == dataset_version(copy)[0] != dataset_version(first)[0]


def test_the_tensors_take_the_manifests_splits_only_under_the_same_settings():
    df = pd.DataFrame({"sha256": [f"{i:064x}" for i in range(30)], "label": ["a", "b", "c"] * 10})
    cfg = PreprocessConfig(seed=0)
    df["split"] = ["train"] * 30  # what a manifest said: kept under the same settings
    df.attrs.update(split_settings(cfg))
    assert list(manifest_splits(df, cfg)) == ["train"] * 30
    other = PreprocessConfig(seed=5)  # another seed: assigned again
    assert list(manifest_splits(df, other)) == list(assign_splits(df, other))
    df.attrs.clear()  # a manifest read from its lines says nothing of its settings
    assert list(manifest_splits(df, cfg)) == list(assign_splits(df, cfg))


def test_a_file_changed_again_within_its_recorded_mtime_is_read_again(home):
    """git's racily clean entries: a file modified just before the previous scan is not trusted by its stat."""
    from unified_pipeline.assets.data_assets import build_manifest

    root = _images(home.parent / "raw" / "ds")
    ref = DatasetRef("ds", "vision", root)
    build_manifest(ref)  # the files were written just now: within the racy window of this scan
    target = root / "b" / "003.png"
    stat, data = target.stat(), bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # same size, same mtime, other bytes
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    version, manifest, _ = build_manifest(ref)
    assert version == dataset_version(root)[0]  # (no cache given: every file hashed afresh)
    assert manifest.set_index("path").loc["b/003.png", "sha256"] == dataset_version(root)[1]["b/003.png"]
