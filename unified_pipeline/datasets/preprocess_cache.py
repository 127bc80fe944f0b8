"""Per-file preprocessing results, keyed by the file's content hash and the settings that made them.

Adding or changing k files of a dataset then decodes those k files only; the rest come from
here. One SQLite file under the run root (a transaction is atomic, so a crash mid-write leaves
the previous entries intact), with batches of decoded rows in pack files beside it (row_packs),
bounded in size: after a build, least recently used entries go until the total is within the bound.
"""
from __future__ import annotations

import json
import mmap
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from unified_pipeline import atomic, hashing
from unified_pipeline.datasets.row_packs import PackedRow, place_row, read_rows, write_pack


DEFAULT_MAX_BYTES = int(os.environ.get("UNIFIED_PREPROCESS_CACHE_BYTES", str(8 << 30)))
USE_RESOLUTION_S = 600.0  # an entry's last use is recorded to within this
PACK_FROM = 64 << 10  # a batch of rows at least this big goes to a pack file, not into SQLite
CACHE_PAGES_KIB = 32 << 10  # SQLite's page cache, at most (it grows with use; 256 MiB stored 6% faster)
ORPHAN_AGE_S = 3600.0  # an unindexed pack file older than this was left by a build that stopped


def settings_digest(kind: str, settings: dict, code: str) -> str:
    """What a decoded row depends on besides the file: the kind, its decoding settings, its code."""
    return hashing.combine([kind, json.dumps(settings, sort_keys=True), code])


def entry_key(content_sha256: str, settings_digest: str) -> str:
    # Both parts are sha256 hex digests already: joining them is a key as unique as hashing them again.
    return f"{content_sha256}:{settings_digest[:32]}"


def entry_keys(content_sha256: np.ndarray, settings_digest: str) -> np.ndarray:
    """entry_key of each hash of an object array, as an object array (one numpy pass, not a call per row)."""
    return np.asarray(content_sha256, dtype=object) + entry_key("", settings_digest)


class PreprocessCache:
    """key -> (array, aux int). `path=None` keeps nothing (every lookup misses).

    Small values (facts) live in the SQLite file; a batch of rows of PACK_FROM bytes or more goes
    to one pack file in the folder beside it (row_packs), and is pruned as a whole.
    """

    def __init__(self, path: str | Path | None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path) if path else None
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None

    @property
    def pack_folder(self) -> Path | None:
        return self.path.with_suffix(".packs") if self.path else None

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
            # Keys are content hashes, so inserts land on random pages: with SQLite's default 2 MB of
            # cache, storing a 180,000-file lane's entries took 10 s against 0.3 s for 18,000.
            # (No mmap_size: mapped pages count in the process's RSS, 110 MB more at 180,000 files,
            # and reading through the map saved no measurable time.)
            conn.execute(f"PRAGMA cache_size=-{CACHE_PAGES_KIB}")
            conn.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, dtype TEXT, shape TEXT, "
                         "aux INTEGER, data BLOB, nbytes INTEGER, used REAL, pack TEXT, offset INTEGER)")
            if "pack" not in {row[1] for row in conn.execute("PRAGMA table_info(entries)")}:  # a cache from before packs
                conn.execute("ALTER TABLE entries ADD COLUMN pack TEXT")
                conn.execute("ALTER TABLE entries ADD COLUMN offset INTEGER")
            conn.execute("CREATE TABLE IF NOT EXISTS packs (name TEXT PRIMARY KEY, nbytes INTEGER, used REAL)")
            # Covering: the size total and the LRU order are read from the index, not from every blob.
            conn.execute("CREATE INDEX IF NOT EXISTS entries_used_size ON entries (used, nbytes)")
            conn.execute("CREATE INDEX IF NOT EXISTS entries_pack_size ON entries (pack, nbytes)")
            self._conn = conn
        return self._conn

    def _batches(self, keys: list[str]) -> Iterable[list[str]]:
        """Keys in lists as long as one statement may bind, up to 5,000 (SQLite binds 32,766 since
        3.32, 999 before): 36,000 keys took 0.16 s in lists of 5,000, 0.19 s in lists of 500."""
        n = min(5000, self._db().getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        for i in range(0, len(keys), n):
            yield keys[i:i + n]

    def get_many(self, keys: list[str]) -> dict[str, tuple[np.ndarray, int]]:
        out, packed = self._lookup(keys)
        for pack, rows in packed.items():
            arrays = read_rows(self.pack_folder / pack, [place for _key, _aux, place in rows])
            if arrays is not None:  # else pruned meanwhile by another build, or cut short: a miss
                out.update((key, (a, aux)) for (key, aux, _), a in zip(rows, arrays))
        return out

    def locate(self, keys: list[str]) -> dict[str, tuple]:
        """Where each stored key's row is, for read_into: (pack, aux, (offset, dtype, shape,
        nbytes)), or (None, aux, None) for a row kept in SQLite. One lookup for a whole build:
        looking the keys up again shard by shard cost as much as reading the rows."""
        inline, packed = self._lookup(keys, with_data=False)
        places = {key: (None, aux, None) for key, (_row, aux) in inline.items()}
        for pack, rows in packed.items():
            places.update((key, (pack, aux, place)) for key, aux, place in rows)
        return places

    def read_into(self, places: dict[str, tuple], positions: dict[str, list[int]], out: np.ndarray) -> dict[str, int]:
        """Each located key's row copied into out[i] for each i of its positions; returns the aux of
        every key read. Packed rows are copied from their mapped pack into `out`, a pack's rows at
        once (_copy_rows)."""
        found = self.get_many([key for key, (pack, _aux, _place) in places.items() if pack is None])
        aux_of = {}
        for key, (row, aux) in found.items():
            for i in positions[key]:
                place_row(out, i, row, key)
            aux_of[key] = aux
        by_pack: dict[str, list] = {}
        for key, (pack, aux, place) in places.items():
            if pack is not None:
                by_pack.setdefault(pack, []).append((key, aux, place))
        for pack, rows in by_pack.items():
            for key, _aux, (_offset, dtype, shape, _nbytes) in rows:
                if tuple(shape) != out.shape[1:] or np.dtype(dtype) != out.dtype:
                    raise ValueError(f"cached row {key} is {dtype}{list(shape)}, expected {out.dtype}{list(out.shape[1:])}")
            if _copy_rows(self.pack_folder / pack, rows, positions, out):
                aux_of.update((key, aux) for key, aux, _place in rows)
        return aux_of

    def _lookup(self, keys: list[str], with_data: bool = True) -> tuple[dict[str, tuple], dict[str, list]]:
        """(key -> (array, aux) of the rows stored in SQLite (array None unless `with_data`), pack ->
        [(key, aux, (offset, dtype, shape, nbytes))] of those in packs), recording their use."""
        db = self._db()
        if db is None or not keys:
            return {}, {}
        out: dict[str, tuple] = {}
        now = time.time()
        stale, packed, shapes = [], {}, {}
        data_column = "data" if with_data else "NULL"
        for part in self._batches(keys):
            rows = db.execute(f"SELECT key, dtype, shape, aux, {data_column}, used, pack, offset, nbytes FROM entries "
                              f"WHERE key IN ({','.join('?' * len(part))})", part)
            for key, dtype, shape, aux, data, used, pack, offset, nbytes in rows:
                shape_t = shapes.get(shape)
                if shape_t is None:  # a lane's rows share a few shapes
                    shape_t = shapes[shape] = tuple(int(s) for s in shape.split(",") if s)
                if pack is not None:
                    packed.setdefault(pack, []).append((key, aux, (offset, dtype, shape_t, nbytes)))
                    continue
                out[key] = (np.frombuffer(data, dtype=dtype).reshape(shape_t) if with_data else None, aux)
                if used < now - USE_RESOLUTION_S:
                    stale.append((now, key))
        self._touch(now, stale, list(packed))
        return out, packed

    def _touch(self, now: float, stale: list[tuple[float, str]], packs: list[str]) -> None:
        """Record the use of entries whose stamp is old and of these packs. The LRU order needs no
        finer clock than USE_RESOLUTION_S: a rebuild soon after rewrites nothing."""
        if not stale and not packs:
            return
        db = self._db()
        with atomic.transaction(db):
            db.executemany("UPDATE entries SET used = ? WHERE key = ?", stale)
            db.executemany("UPDATE packs SET used = ? WHERE name = ? AND used < ?",
                           [(now, pack, now - USE_RESOLUTION_S) for pack in packs])

    def put_many(self, items: Iterable[tuple[str, np.ndarray, int]]) -> None:
        db = self._db()
        if db is None:
            return
        items = list(items)
        if sum(a.nbytes for _k, a, _aux in items) >= PACK_FROM:
            placed = write_pack(self.pack_folder, (a for _k, a, _aux in items))
            self.add_packed((k, aux, r) for (k, _a, aux), r in zip(items, placed, strict=True))
            return
        now = time.time()
        rows = [(k, a.dtype.str, ",".join(map(str, a.shape)), int(aux), np.ascontiguousarray(a).tobytes(),
                 int(a.nbytes), now) for k, a, aux in items]
        with atomic.transaction(db):
            db.executemany("INSERT OR REPLACE INTO entries (key, dtype, shape, aux, data, nbytes, used) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def add_packed(self, rows: Iterable[tuple[str, int, PackedRow]]) -> None:
        """Index rows already written to packs of pack_folder (write_pack): (key, aux, place) per row."""
        db = self._db()
        rows = list(rows)
        if db is None or not rows:
            return
        now = time.time()
        sizes: dict[str, int] = {}
        for _key, _aux, r in rows:
            sizes[r.pack] = sizes.get(r.pack, 0) + r.nbytes
        with atomic.transaction(db):  # one transaction for every pack: a commit each cost 2.5 ms
            db.executemany("INSERT OR REPLACE INTO packs VALUES (?, ?, ?)", [(p, n, now) for p, n in sizes.items()])
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                           [(key, r.dtype, ",".join(map(str, r.shape)), int(aux), r.nbytes, now, r.pack, r.offset)
                            for key, aux, r in rows])

    def get_json(self, keys: list[str]) -> dict[str, object]:
        """JSON values (small per-file facts) stored with put_json, under the same size bound and LRU."""
        db = self._db()
        if db is None or not keys:
            return {}
        found, data, stale = [], [], []
        now = time.time()
        for part in self._batches(keys):  # only the bytes: a manifest looks up every file's facts
            # (no "AND pack IS NULL" here: with it SQLite took 4x as long over 180,000 keys)
            for key, blob, used, pack in db.execute(f"SELECT key, data, used, pack FROM entries WHERE key IN "
                                                    f"({','.join('?' * len(part))})", part):
                if pack is not None:
                    continue
                found.append(key)
                data.append(blob)
                if used < now - USE_RESOLUTION_S:
                    stale.append((now, key))
        self._touch(now, stale, [])
        return dict(zip(found, json.loads(b"[" + b",".join(data) + b"]")))  # one parse

    def put_json(self, items: Iterable[tuple[str, object]]) -> None:
        self.put_json_texts((key, json.dumps(value)) for key, value in items)

    def put_json_texts(self, items: Iterable[tuple[str, str]]) -> None:
        """put_json of values already dumped to JSON text (e.g. by the worker that read them)."""
        db = self._db()
        if db is None:
            return
        now = time.time()
        rows = []
        for key, text in items:
            data = text.encode()
            rows.append((key, "|u1", str(len(data)), 0, data, len(data), now))
        with atomic.transaction(db):  # kept in SQLite whatever the total: a fact is read alone, by key
            db.executemany("INSERT OR REPLACE INTO entries (key, dtype, shape, aux, data, nbytes, used) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def total_bytes(self) -> int:
        db = self._db()
        if db is None:
            return 0
        inline = db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM entries WHERE pack IS NULL").fetchone()[0]
        return int(inline) + int(db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM packs").fetchone()[0])

    def _bytes_at_most(self) -> int:
        """A bound on total_bytes read without a pass over the entries: the packs' sizes plus the
        SQLite file's pages, which hold every inline value."""
        db = self._db()
        pages = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) + int(db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM packs").fetchone()[0])

    def __len__(self) -> int:
        db = self._db()
        return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]) if db else 0

    def prune(self) -> int:
        """Drop least recently used entries (a pack as a whole) until the total is within
        max_bytes, and pack files nothing refers to; returns how many entries went."""
        db = self._db()
        if db is None:
            return 0
        self._sweep_orphans()
        if self._bytes_at_most() <= self.max_bytes:  # (summing every entry took 10 ms at 18,000 files, each build)
            return 0
        excess = self.total_bytes() - self.max_bytes
        if excess <= 0:
            return 0
        units = db.execute("SELECT used, 0, key, nbytes FROM entries WHERE pack IS NULL UNION ALL "
                           "SELECT used, 1, name, nbytes FROM packs ORDER BY 1, 3").fetchall()
        keys, packs, freed = [], [], 0
        for _used, is_pack, name, nbytes in units:
            if freed >= excess:
                break
            (packs if is_pack else keys).append((name,))
            freed += nbytes
        before = len(self)
        with atomic.transaction(db):
            db.executemany("DELETE FROM entries WHERE key = ?", keys)
            db.executemany("DELETE FROM entries WHERE pack = ?", packs)
            db.executemany("DELETE FROM packs WHERE name = ?", packs)
        for (name,) in packs:  # after the commit: a reader that still finds the entry finds no file, a miss
            (self.pack_folder / name).unlink(missing_ok=True)
        return before - len(self)

    def _sweep_orphans(self) -> None:
        """Pack files no entry refers to: written by a build that stopped before indexing them.
        Only old ones: a running build indexes its packs seconds after writing them."""
        folder = self.pack_folder
        if folder is None or not folder.is_dir():
            return
        known = {row[0] for row in self._db().execute("SELECT name FROM packs")}
        cutoff = time.time() - ORPHAN_AGE_S
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.lstrip(".").split(".tmp")[0] not in known and entry.stat().st_mtime < cutoff:
                    Path(entry.path).unlink(missing_ok=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def default_cache() -> PreprocessCache:
    from unified_pipeline.paths import unified_home

    return PreprocessCache(unified_home() / "cache" / "preprocessed.sqlite")


def _copy_rows(path: Path, rows: list[tuple], positions: dict[str, list[int]], out: np.ndarray) -> bool:
    """The rows (key, aux, place) of one pack copied into their positions in `out`: the pack is
    mapped and the rows taken at once by index (a shard takes some of a pack's rows, every second
    or fifth: row by row, or a read per run of adjacent rows, cost 8 µs a row). False when the
    pack is gone (pruned meanwhile) or cut short (a crash): its rows count as misses."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0 or any(place[0] + place[3] > size for _key, _aux, place in rows):
                return False
            mapped = _map_whole(fh.fileno())
    except FileNotFoundError:
        return False
    try:
        flat = np.frombuffer(mapped, dtype=np.uint8)
        row_bytes = out[0].nbytes
        if row_bytes and all(place[0] % row_bytes == 0 for _key, _aux, place in rows):  # rows of one size: the usual
            whole = flat[: size - size % row_bytes].view(out.dtype).reshape(-1, *out.shape[1:])
            at = [(place[0] // row_bytes, i) for key, _aux, place in rows for i in positions[key]]
            out[[i for _j, i in at]] = whole[[j for j, _i in at]]
            del whole
        else:
            for key, _aux, (offset, _dtype, _shape, nbytes) in rows:
                for i in positions[key]:
                    out[i] = flat[offset:offset + nbytes].view(out.dtype).reshape(out.shape[1:])
        del flat  # (no view of the map may outlive it)
    finally:
        mapped.close()
    return True


def _map_whole(fd: int) -> mmap.mmap:
    """A read-only map of the file with its pages mapped at once where the system can (Linux): a
    shard takes most of a pack's rows, and a page fault each took twice as long as reading them."""
    if hasattr(mmap, "MAP_POPULATE"):
        return mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
    return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
