"""The preprocessing cache: rows in pack files, read back equal, pruned whole, lost packs are misses."""
from __future__ import annotations

import os
import sqlite3
import time
from types import SimpleNamespace

import numpy as np
import pytest

from unified_pipeline.datasets import preprocess_cache
from unified_pipeline.datasets.preprocess_cache import PreprocessCache
from unified_pipeline.datasets.row_packs import write_pack


def _rows(n, seed=0, shape=(3, 32, 32)):
    rng = np.random.default_rng(seed)
    return [(f"k{seed}-{i}", rng.integers(0, 256, shape, dtype=np.uint8), i) for i in range(n)]


def test_a_big_batch_goes_to_one_pack_and_reads_back_equal(tmp_path):
    cache = PreprocessCache(tmp_path / "c.sqlite")
    rows = _rows(40)  # 120 KB: above PACK_FROM
    cache.put_many(rows)
    assert len(list(cache.pack_folder.iterdir())) == 1 and len(cache) == 40
    got = cache.get_many([k for k, _a, _x in rows])
    for key, array, aux in rows:
        assert np.array_equal(got[key][0], array) and got[key][1] == aux
    out = np.zeros((3, 3, 32, 32), dtype=np.uint8)
    positions = {rows[5][0]: [0, 2], rows[9][0]: [1], "absent": [1]}
    aux = cache.read_into(cache.locate(list(positions)), positions, out)
    assert aux == {rows[5][0]: 5, rows[9][0]: 9}
    assert np.array_equal(out[0], rows[5][1]) and np.array_equal(out[2], rows[5][1]) and np.array_equal(out[1], rows[9][1])


def test_rows_of_a_pack_that_mixes_shapes_read_back_equal(tmp_path):
    cache = PreprocessCache(tmp_path / "c.sqlite")
    small, big = _rows(30, seed=3, shape=(5,)), _rows(30, seed=4)
    mixed = [row for pair in zip(small, big) for row in pair]  # offsets of the big rows: not multiples of theirs
    cache.put_many(mixed)
    assert len(list(cache.pack_folder.iterdir())) == 1
    out = np.zeros((3, 3, 32, 32), dtype=np.uint8)
    positions = {big[7][0]: [2], big[20][0]: [0, 1]}
    assert cache.read_into(cache.locate(list(positions)), positions, out) == {big[7][0]: 7, big[20][0]: 20}
    assert np.array_equal(out[2], big[7][1]) and np.array_equal(out[0], big[20][1]) and np.array_equal(out[1], big[20][1])


def test_a_small_batch_stays_in_sqlite(tmp_path):
    cache = PreprocessCache(tmp_path / "c.sqlite")
    rows = _rows(3, shape=(4,))
    cache.put_many(rows)
    assert not cache.pack_folder.exists()
    out = np.zeros((1, 4), dtype=np.uint8)
    assert cache.read_into(cache.locate([rows[1][0]]), {rows[1][0]: [0]}, out) == {rows[1][0]: 1}
    assert np.array_equal(out[0], rows[1][1])


def test_a_row_of_the_wrong_shape_is_refused_not_broadcast(tmp_path):
    cache = PreprocessCache(tmp_path / "c.sqlite")
    rows = _rows(40)
    cache.put_many(rows)
    with pytest.raises(ValueError, match="expected"):
        cache.read_into(cache.locate([rows[0][0]]), {rows[0][0]: [0]}, np.zeros((1, 1, 32, 32), dtype=np.uint8))


def test_a_pack_gone_or_cut_short_is_a_miss(tmp_path):
    cache = PreprocessCache(tmp_path / "c.sqlite")
    first, second = _rows(40, seed=1), _rows(40, seed=2)
    cache.put_many(first)
    cache.put_many(second)
    packs = sorted(cache.pack_folder.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    packs[0].unlink()  # pruned by another build meanwhile
    with open(packs[1], "r+b") as fh:  # cut short by a crash
        fh.truncate(1000)
    keys = [k for k, _a, _x in first + second]
    assert cache.get_many(keys) == {}
    assert cache.read_into(cache.locate(keys), {k: [0] for k in keys}, np.zeros((1, 3, 32, 32), dtype=np.uint8)) == {}


def test_prune_drops_least_recently_used_packs_whole_and_their_files(tmp_path, monkeypatch):
    cache = PreprocessCache(tmp_path / "c.sqlite")
    batches = [_rows(40, seed=s) for s in range(3)]
    clock = [1000.0]
    monkeypatch.setattr(preprocess_cache, "time", SimpleNamespace(time=lambda: clock[0]))
    for batch in batches:
        cache.put_many(batch)
        clock[0] += preprocess_cache.USE_RESOLUTION_S * 2
    cache.get_many([batches[0][0][0]])  # the oldest pack is used again: the middle one goes first
    cache.max_bytes = 2 * 40 * 3 * 32 * 32
    assert cache.prune() == 40 and len(cache) == 80 and cache.total_bytes() <= cache.max_bytes
    assert len(list(cache.pack_folder.iterdir())) == 2
    assert set(cache.get_many([batches[1][0][0], batches[0][1][0], batches[2][1][0]])) == {batches[0][1][0], batches[2][1][0]}


def test_prune_removes_old_pack_files_no_entry_refers_to(tmp_path):
    cache = PreprocessCache(tmp_path / "c.sqlite")
    cache.put_many(_rows(40))
    orphan = write_pack(cache.pack_folder, [np.zeros(10, dtype=np.uint8)])[0].pack  # a build stopped before indexing
    recent = write_pack(cache.pack_folder, [np.zeros(10, dtype=np.uint8)])[0].pack  # a build still running
    old = time.time() - 2 * preprocess_cache.ORPHAN_AGE_S
    os.utime(cache.pack_folder / orphan, (old, old))
    cache.prune()
    names = {p.name for p in cache.pack_folder.iterdir()}
    assert orphan not in names and recent in names and len(names) == 2 and len(cache) == 40


def test_a_cache_from_before_packs_is_upgraded_in_place(tmp_path):
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE entries (key TEXT PRIMARY KEY, dtype TEXT, shape TEXT, aux INTEGER, data BLOB, "
                   "nbytes INTEGER, used REAL)")
        db.execute("INSERT INTO entries VALUES ('old', '|u1', '2', 7, x'0102', 2, 0)")
    cache = PreprocessCache(path)
    assert cache.get_many(["old"])["old"][0].tolist() == [1, 2]
    cache.put_many(_rows(40))
    assert len(cache) == 41 and cache.total_bytes() == 2 + 40 * 3 * 32 * 32
