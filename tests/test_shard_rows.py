"""The per-row facts of class shards, computed for all rows at once, equal the row-by-row rules."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from unified_pipeline import hashing
from unified_pipeline.datasets import class_shards
from unified_pipeline.datasets.preprocess_cache import entry_key, entry_keys


def _hashes(n: int, seed: int = 0) -> list[str]:
    return [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n)]


def _cuts_one_row_at_a_time(rows: np.ndarray, keys: list[str], per_shard: int) -> list[list[int]]:
    """The cut rule stated row by row: cut after a row when the shard is full or its key says so."""
    out, start = [], 0
    for pos, i in enumerate(rows):
        if pos + 1 - start >= per_shard or int(keys[i][:8], 16) % (per_shard // 2) == 0:
            out.append(rows[start:pos + 1].tolist())
            start = pos + 1
    if start < len(rows):
        out.append(rows[start:].tolist())
    return out


@pytest.mark.parametrize("per_shard", [64, 65, 100, 1024])
def test_content_defined_cuts_equal_the_row_by_row_rule(per_shard):
    rng = np.random.default_rng(per_shard)
    for n in (0, 1, 63, 64, 65, 500, 5000):
        hashes = _hashes(n, seed=n)
        if n > 200:  # long runs without a content cut, so full shards are cut too
            hashes[50:200] = ["f" * 8 + h[8:] for h in hashes[50:200]]
        keys = [entry_key(h, "d" * 64) for h in hashes]
        heads = class_shards.key_heads(np.array(hashes, dtype=object))
        rows = np.sort(rng.choice(n, size=int(n * 0.7), replace=False)) if n else np.arange(0)
        got = [shard.tolist() for shard in class_shards.cut_shards(rows, heads, per_shard)]
        assert got == _cuts_one_row_at_a_time(rows, keys, per_shard)
        assert all(0 < len(shard) <= per_shard for shard in got)


def test_key_heads_parse_every_hash_and_fall_back_for_odd_ones():
    hashes = _hashes(300)
    assert class_shards.key_heads(np.array(hashes, dtype=object)).tolist() == [int(h[:8], 16) for h in hashes]
    odd = ["ABCDEF12" + "0" * 10, *hashes[:3]]  # not 64 digits: parsed one at a time
    assert class_shards.key_heads(np.array(odd, dtype=object)).tolist() == [int(h[:8], 16) for h in odd]
    assert class_shards.key_heads(np.array([], dtype=object)).tolist() == []


def test_shard_digests_and_keys_equal_the_row_by_row_formula():
    hashes = _hashes(40)
    labels = ["b", "a", "c", "a"] * 10
    manifest = pd.DataFrame({"sha256": hashes, "label": labels})
    digest = hashing.combine(["vision", "{}", "code"])
    rows = class_shards.sample_rows(manifest, digest)
    assert rows.classes == ["a", "b", "c"] and rows.labels.tolist() == [["a", "b", "c"].index(c) for c in labels]
    shard = np.array([3, 4, 5, 17, 39])
    keys = [entry_key(hashes[i], digest) for i in shard]
    assert rows.keys(shard) == keys == entry_keys(np.array(hashes, dtype=object)[shard], digest).tolist()
    expected = hashing.combine([digest, *(f"{k}:{rows.labels[i]}" for k, i in zip(keys, shard))])
    assert class_shards.shard_digest(rows, shard) == expected
