"""The one place that hashes content.

Dataset versions are a sha256 over (relative path, file sha256) pairs. File hashes are cached
by (path, size, mtime_ns) in a SQLite file under the run root, so re-observing many unchanged
files only costs a stat() each.
"""
from __future__ import annotations

import hashlib
import operator
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from unified_pipeline import atomic
from unified_pipeline.step_progress import StepProgress

_CHUNK = 1 << 20
LOOKUP_ONE_BY_ONE = 900  # paths looked up by name (old SQLite builds take 999 at most); more: the folder's rows
_lock = threading.Lock()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def combine(parts: Iterable[str]) -> str:
    """Order-sensitive digest of several strings (callers sort when order must not matter)."""
    # One update of the joined text: the same digest as a part and a NUL at a time, and faster
    # (a tensors step combines every sample's key).
    parts = list(parts)
    return hashlib.sha256(("\0".join(parts) + "\0" if parts else "").encode("utf-8")).hexdigest()


class HashCache:
    """sha256 of files, remembered by (absolute path, size, mtime_ns)."""

    def __init__(self, db_path: str | Path | None):
        self.db_path = Path(db_path) if db_path else None
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self.db_path is None:
            return None
        if self._conn is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # A commit then waits for no sync: after a power cut the cache may forget its last
            # entries (those files are hashed again), never hold a wrong one.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)"
            )
            self._conn = conn
        return self._conn

    def lookup(self, paths: list, under: str | None = None, strip: int | None = None) -> tuple[dict, dict]:
        """(sha256 per path where the cache knows the file as it is now, else None; (size,
        mtime_ns) per path). Up to LOOKUP_ONE_BY_ONE paths are looked up by name; more, and
        `under` (a folder holding every path) reads that folder's entries only.
        `strip`: key the results by each path's text after this many characters (relative paths)."""
        db = self._db()
        known: dict[str, tuple[int, int, str]] = {}
        if db is not None and paths:
            query, args = "SELECT path, size, mtime_ns, sha256 FROM files", ()
            if len(paths) <= LOOKUP_ONE_BY_ONE:
                query, args = query + f" WHERE path IN ({','.join('?' * len(paths))})", [str(p) for p in paths]
            elif under:  # the primary key's range of the folder, not every file ever hashed
                prefix = os.path.join(under, "")
                query, args = query + " WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + chr(ord(os.sep) + 1))
            with _lock:
                rows = db.execute(query, args).fetchall()
            known = {r[0]: (r[1], r[2], r[3]) for r in rows}
        keys = [str(p) for p in paths]
        names = paths if strip is None else [key[strip:] for key in keys]
        stat = stat_files(keys)
        hashes: dict = {}
        for name, key, (size, mtime) in zip(names, keys, stat):
            hit = known.get(key)
            hashes[name] = hit[2] if hit and hit[0] == size and hit[1] == mtime else None
        stats = dict(zip(names, stat))
        if strip is not None and os.sep != "/":
            hashes, stats = ({k.replace(os.sep, "/"): v for k, v in d.items()} for d in (hashes, stats))
        return hashes, stats

    def remember(self, rows: list[tuple[str, int, int, str]]) -> None:
        """Store (path, size, mtime_ns, sha256) rows: files hashed elsewhere (e.g. while being decoded)."""
        db = self._db()
        if db is None or not rows:
            return
        # One transaction: autocommitted, each row paid its own fsync (4.5 s for 18,000 files).
        with _lock, atomic.transaction(db):
            db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", rows)

    def hash_files(self, paths: list, log: Any = None, desc: str = "hashing", under: str | None = None,
                   strip: int | None = None) -> dict:
        """sha256 per path (Path or str, keyed as given); `log` (Dagster context.log, a logger or a
        callable) gets progress lines. `under` and `strip`: as for lookup."""
        out, stats = self.lookup(paths, under, strip)
        fresh: list[tuple[str, int, int, str]] = []
        with StepProgress(len(paths), desc, log=log, unit="file") as progress:
            progress.update(sum(1 for digest in out.values() if digest is not None))
            for p, (name, digest) in zip(paths, list(out.items())):  # lookup keeps the paths' order
                if digest is None:
                    out[name] = digest = sha256_file(p)
                    fresh.append((str(p), *stats[name], digest))
                    progress.update()
        self.remember(fresh)
        return out


def stat_files(paths: list[str]) -> list[tuple[int, int]]:
    """(size, mtime_ns) of each path, in order. (Two threads were faster on an idle machine and
    slower on a busy one: one.)"""
    return [(st.st_size, st.st_mtime_ns) for st in map(os.stat, paths)]


def list_files(root: Path) -> list[Path]:
    """Every regular file under root, sorted, skipping hidden files and folders.

    A symlink whose target lies outside root is skipped: a dataset or model folder must not
    pull in files from elsewhere on the machine (links that stay inside root are fine).
    """
    return [Path(p) for p in walk_files(root)]


def walk_files(root: str | Path) -> list[str]:
    """list_files as strings, in the same order (os.walk's, without following linked folders);
    one scandir per folder, so a folder of 100,000 files costs little beyond the listing."""
    real_root = os.path.realpath(root)
    out: list[str] = []

    def visit(folder: str) -> None:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=_NAME)
        folders = []
        for e in entries:
            if e.is_dir():
                if not e.is_symlink():
                    folders.append(e.path)
            elif not e.is_symlink() or os.path.realpath(e.path).startswith(real_root + os.sep):
                out.append(e.path)
        for sub in folders:
            visit(sub)

    visit(str(root))
    return out


_NAME = operator.attrgetter("name")


def dataset_version(root: str | Path, cache: HashCache | None = None, log: Any = None) -> tuple[str, dict[str, str]]:
    """Content version of a dataset folder and the sha256 of each file by relative path.

    `log` (e.g. a Dagster context.log) receives progress lines when hashing takes a while.
    """
    base = os.path.abspath(root)
    by_rel = (cache or HashCache(None)).hash_files(walk_files(base), log=log, desc=f"hashing {Path(root).name}",
                                                   under=base, strip=_relative_from(base))
    return files_version(by_rel), by_rel


def known_hashes(root: str | Path, cache: HashCache, paths: list[str] | None = None
                 ) -> tuple[dict[str, str | None], dict[str, tuple[int, int]]]:
    """dataset_version's files without hashing any: (sha256 by relative path where the cache
    knows the file as it is now, else None; (size, mtime_ns) by relative path). For a reader
    that hashes the rest while it reads them anyway (`HashCache.remember` stores them).
    `paths`: the folder's walk_files, when the caller has it."""
    base = os.path.abspath(root)
    return cache.lookup(walk_files(base) if paths is None else paths, under=base, strip=_relative_from(base))


def files_version(by_rel: dict[str, str]) -> str:
    """The version dataset_version gives a folder holding exactly these (relative path: sha256) files."""
    rels = sorted(by_rel)  # (sorting the keys alone, and joining in C: a quarter faster at 18,000 files)
    return combine(map(":".join, zip(rels, map(by_rel.__getitem__, rels))))


def _relative_from(base: str) -> int:
    """Where a path under `base` starts to be relative to it."""
    return len(os.path.join(base, ""))
