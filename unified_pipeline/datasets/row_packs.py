"""Decoded rows stored as plain files ("packs") beside the preprocessing cache's SQLite index.

SQLite writes a large blob at about 6 ms per MB (the WAL, then the checkpoint); a pixel row of
every image of a lane, through SQLite, cost more than decoding it. A pack holds the rows of one
batch (a decode task's files) back to back, written once by whichever process decoded them,
so the rows never cross a pipe; the cache's index records each row's pack and offset.

Numpy only: decode workers import this.
"""
from __future__ import annotations

import mmap
import os
import uuid
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

SUFFIX = ".pack"


class PackedRow(NamedTuple):
    """Where one row went: its pack (file name), byte offset, dtype and shape."""

    pack: str
    offset: int
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def write_pack(folder: str | Path, arrays: Iterable[np.ndarray]) -> list[PackedRow]:
    """The arrays in one new pack file of `folder`, in order; [] (no file) when there are none.

    Written under a temporary name and renamed, so a reader never sees a partial pack. Not
    fsynced: a cache entry lost to a power cut is decoded again (the index is checked against
    the pack's size on read), and a sync per pack would cost more than the decoding it saves.
    """
    arrays = list(arrays)
    if not arrays:
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex + SUFFIX
    kinds = {(a.dtype.str, a.shape) for a in arrays}
    if len(kinds) == 1:  # the usual batch: one copy into one block, one write (a write per row cost 6 µs a row)
        (dtype, shape), = kinds
        blocks = [np.stack(arrays, out=np.empty((len(arrays), *shape), dtype=dtype))]  # (out: C order)
        nbytes = blocks[0].nbytes // len(arrays)
        rows = [PackedRow(name, i * nbytes, dtype, tuple(shape), nbytes) for i in range(len(arrays))]
    else:
        blocks, rows, offset = [np.ascontiguousarray(a) for a in arrays], [], 0
        for a in blocks:
            rows.append(PackedRow(name, offset, a.dtype.str, tuple(a.shape), int(a.nbytes)))
            offset += a.nbytes
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        for block in blocks:
            fh.write(memoryview(block).cast("B"))
    os.replace(tmp, folder / name)
    return rows


def read_rows(path: Path, rows: list[tuple[int, str, tuple[int, ...], int]]) -> list[np.ndarray] | None:
    """(offset, dtype, shape, nbytes) rows of one pack as read-only arrays over the mapped file,
    or None when the pack is gone or short (pruned by another process, or cut by a crash)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0 or any(offset + nbytes > size for offset, _d, _s, nbytes in rows):
                return None
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after the file closes
    except FileNotFoundError:
        return None
    return [np.frombuffer(mapped, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset).reshape(shape)
            for offset, dtype, shape, nbytes in rows]


def place_row(out: np.ndarray, i: int, row: np.ndarray, key: str) -> None:
    """out[i] = row, refusing a row of another shape (the assignment would broadcast it silently)."""
    if row.shape != out.shape[1:]:
        raise ValueError(f"row {key} has shape {list(row.shape)}, expected {list(out.shape[1:])}")
    out[i] = row
