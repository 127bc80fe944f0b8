"""Per-file preprocessing results, keyed by the file's content hash and the settings that made them.

Adding or changing k files of a dataset then decodes those k files only; the rest come from
here. One SQLite file under the run root (a transaction is atomic, so a crash mid-write leaves
the previous entries intact), bounded in size: after a build, least recently used entries go
until the total is within the bound.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from unified_pipeline import hashing


DEFAULT_MAX_BYTES = int(os.environ.get("UNIFIED_PREPROCESS_CACHE_BYTES", str(8 << 30)))
USE_RESOLUTION_S = 600.0  # an entry's last use is recorded to within this


def settings_digest(kind: str, settings: dict, code: str) -> str:
    """What a decoded row depends on besides the file: the kind, its decoding settings, its code."""
    return hashing.combine([kind, json.dumps(settings, sort_keys=True), code])


def entry_key(content_sha256: str, settings_digest: str) -> str:
    # Both parts are sha256 hex digests already: joining them is a key as unique as hashing them again.
    return f"{content_sha256}:{settings_digest[:32]}"


class PreprocessCache:
    """key -> (array, aux int). `path=None` keeps nothing (every lookup misses)."""

    def __init__(self, path: str | Path | None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path) if path else None
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self.path is None:
            return None
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            # Rows of a few KB: 16 KiB pages hold them without overflow chains (writes 1.7x faster
            # than 4 KiB pages). Takes effect when the file is created, so before WAL mode.
            conn.execute("PRAGMA page_size=16384")
            conn.execute("PRAGMA journal_mode=WAL")
            # A transaction stays all-or-nothing; a power cut may lose the last ones, which are re-decoded.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, dtype TEXT, shape TEXT, "
                         "aux INTEGER, data BLOB, nbytes INTEGER, used REAL)")
            # Covering: the size total and the LRU order are read from the index, not from every blob.
            conn.execute("CREATE INDEX IF NOT EXISTS entries_used_size ON entries (used, nbytes)")
            self._conn = conn
        return self._conn

    def present(self, keys: Iterable[str]) -> set[str]:
        db = self._db()
        keys = list(keys)
        if db is None or not keys:
            return set()
        found: set[str] = set()
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            part = keys[i:i + 500]
            rows = db.execute(f"SELECT key FROM entries WHERE key IN ({','.join('?' * len(part))})", part)
            found.update(r[0] for r in rows)
        return found

    def get_many(self, keys: list[str]) -> dict[str, tuple[np.ndarray, int]]:
        db = self._db()
        if db is None or not keys:
            return {}
        out: dict[str, tuple[np.ndarray, int]] = {}
        now = time.time()
        stale = []
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows = db.execute(f"SELECT key, dtype, shape, aux, data, used FROM entries WHERE key IN "
                              f"({','.join('?' * len(part))})", part)
            for key, dtype, shape, aux, data, used in rows:
                shape_t = tuple(int(s) for s in shape.split(",") if s)
                out[key] = (np.frombuffer(data, dtype=dtype).reshape(shape_t), aux)
                if used < now - USE_RESOLUTION_S:
                    stale.append((now, key))
        if stale:  # the LRU order needs no finer clock than this: a rebuild soon after rewrites nothing
            db.execute("BEGIN")
            db.executemany("UPDATE entries SET used = ? WHERE key = ?", stale)
            db.execute("COMMIT")
        return out

    def put_many(self, items: Iterable[tuple[str, np.ndarray, int]]) -> None:
        db = self._db()
        if db is None:
            return
        now = time.time()
        rows = [(k, a.dtype.str, ",".join(map(str, a.shape)), int(aux), np.ascontiguousarray(a).tobytes(),
                 int(a.nbytes), now) for k, a, aux in items]
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")

    def get_json(self, keys: list[str]) -> dict[str, object]:
        """JSON values (small per-file facts) stored with put_json, under the same size bound and LRU."""
        found = self.get_many(keys)
        values = json.loads(b"[" + b",".join(a.tobytes() for a, _aux in found.values()) + b"]")  # one parse
        return dict(zip(found, values))

    def put_json(self, items: Iterable[tuple[str, object]]) -> None:
        self.put_many((k, np.frombuffer(json.dumps(v).encode(), dtype=np.uint8), 0) for k, v in items)

    def total_bytes(self) -> int:
        db = self._db()
        return int(db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM entries").fetchone()[0]) if db else 0

    def __len__(self) -> int:
        db = self._db()
        return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]) if db else 0

    def prune(self) -> int:
        """Drop least recently used entries until the total is within max_bytes; returns how many."""
        db = self._db()
        if db is None:
            return 0
        excess = self.total_bytes() - self.max_bytes
        if excess <= 0:
            return 0
        dropped, freed = [], 0
        for key, nbytes in db.execute("SELECT key, nbytes FROM entries ORDER BY used ASC, key ASC"):
            if freed >= excess:
                break
            dropped.append((key,))
            freed += nbytes
        db.execute("BEGIN")
        db.executemany("DELETE FROM entries WHERE key = ?", dropped)
        db.execute("COMMIT")
        return len(dropped)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def default_cache() -> PreprocessCache:
    from unified_pipeline.paths import unified_home

    return PreprocessCache(unified_home() / "cache" / "preprocessed.sqlite")
