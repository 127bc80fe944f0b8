"""Tensors on disk as shards of bounded size, read memory-mapped.

A tensors folder holds one safetensors file per group of rows: `<split>-<n>-<digest>.safetensors`
with the split's fields (`x`, `y`, `lengths`) for up to SHARD_BYTES and SHARD_ROWS of rows, and `shards.json`
listing them with each field's stored dtype and how it is decoded (uint8 pixels and float16
features become normalised float32 when read). The digest covers the shard's content, so a
rebuild can take an unchanged shard from an earlier folder instead of writing it again.

Why safetensors shards rather than WebDataset, LitData or MosaicML streaming: those formats
stream samples sequentially from tar/chunk files, which fits shuffle buffers but not the
trainer's contract (one global permutation per epoch, identical on every device and after a
resume). safetensors is already the project's tensor format, has no pickle, and `safe_open`
maps a file without reading it, so any row of any shard is a cheap random read.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch

from unified_pipeline import atomic, hashing
from unified_pipeline.errors import DatasetError

INDEX_FILE = "shards.json"
SHARD_BYTES = 64 * 2**20  # bounds the memory of writing a shard and of reading one whole
# Bounds what one changed sample costs: its shard is rebuilt whole (from the preprocessing cache).
# One changed image of 17,970: the tensors step took 0.21 s with 1,024, 0.35 s with 4,096.
SHARD_ROWS = 1024
PLAIN_GROUP = "all"  # keys without a split prefix


def split_key(key: str) -> tuple[str, str]:
    group, _, field = key.rpartition("/")
    return group or PLAIN_GROUP, field


def rows_per_shard(row_bytes: int, limit: int | None = None) -> int:
    return max(1, min(SHARD_ROWS, (limit or SHARD_BYTES) // max(row_bytes, 1)))


def shard_name(group: str, index: int, digest: str) -> str:
    return f"{group}-{index:05d}-{digest[:16]}.safetensors"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    parts = []
    for key in sorted(tensors):
        t = tensors[key].detach().cpu()
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
        parts += [key, str(t.dtype), str(tuple(t.shape)), hashing.sha256_bytes(raw.numpy().tobytes())]
    return hashing.combine(parts)


def write_shard(directory: Path, group: str, index: int, tensors: dict[str, torch.Tensor],
                stats: dict | None = None, digest: str | None = None) -> dict:
    """One shard file (atomic); returns its index entry. `digest` names it (default: its bytes)."""
    digest = digest or tensor_digest(tensors)
    name = shard_name(group, index, digest)
    rows = len(next(iter(tensors.values()))) if tensors else 0
    atomic.save_safetensors(Path(directory) / name, tensors,
                            metadata={"rows": str(rows), "stats": json.dumps(stats or {})})
    return {"file": name, "rows": rows}


def shard_stats(path: Path) -> dict:
    """The statistics a builder stored with a shard, read from the header alone: a safetensors
    file starts with its header's length (8 bytes, little-endian), then the header as JSON.
    (Half the time of safe_open, which maps the file and checks every tensor's entry.)"""
    with open(path, "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
    return json.loads((header.get("__metadata__") or {}).get("stats", "{}"))


def write_groups(directory: Path, tensors: dict[str, torch.Tensor], decode: dict[str, dict],
                 limit: int | None = None) -> None:
    """Write a whole in-memory bundle as shards plus the index."""
    limit = limit or SHARD_BYTES
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        group, field = split_key(key)
        groups.setdefault(group, {})[field] = t
    index: dict[str, Any] = {}
    for group, fields in sorted(groups.items()):
        lengths = {len(t) if t.dim() else -1 for t in fields.values()}
        entries = []
        if len(lengths) == 1 and min(lengths) > 0:  # rows line up: cut them into bounded shards
            n = lengths.pop()
            step = rows_per_shard(sum(t[:1].numel() * t.element_size() for t in fields.values()), limit)
            for i, start in enumerate(range(0, n, step)):
                part = {f: t[start:start + step] for f, t in fields.items()}
                entries.append(write_shard(directory, group, i, part))
        else:  # unrelated tensors (a vocabulary, a bank): one file, never cut
            entries.append({**write_shard(directory, group, 0, fields), "rows": None})
        index[group] = {"fields": field_specs(fields, decode, group), "shards": entries}
    write_index(directory, index)


def field_specs(fields: dict[str, torch.Tensor], decode: dict[str, dict], group: str) -> dict:
    return {f: {"dtype": str(t.dtype).removeprefix("torch."), "row_shape": list(t.shape[1:]),
                **({"decode": decode[f"{group}/{f}" if f"{group}/{f}" in decode else f]}
                   if (f"{group}/{f}" in decode or f in decode) else {})}
            for f, t in fields.items()}


def write_index(directory: Path, groups: dict[str, Any]) -> None:
    atomic.write_json(Path(directory) / INDEX_FILE, {"format": 1, "groups": groups})


def read_index(directory: Path) -> dict[str, Any]:
    path = Path(directory) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read the shard index ({exc})") from exc
    if index.get("format") != 1:
        raise DatasetError(f"{path}: unknown shard index format {index.get('format')!r}")
    return index["groups"]


def decode_rows(t: torch.Tensor, spec: dict | None) -> torch.Tensor:
    """Stored rows -> model input: float32 * scale + shift along `axis` (per channel or mel bin),
    then NaN (marks padding) -> 0."""
    if not spec:
        return t
    out = t.to(torch.float32)
    shape = [1] * out.dim()
    shape[spec.get("axis", 1)] = -1
    out = out * torch.tensor(spec["scale"], dtype=torch.float32, device=out.device).view(shape)
    out = out + torch.tensor(spec["shift"], dtype=torch.float32, device=out.device).view(shape)
    return out.nan_to_num_(spec.get("nan", 0.0)) if "nan" in spec else out


class MappedRows:
    """A field spread over shard files, read on demand: rows are copied out of memory-mapped
    shards and decoded per access, so holding one costs no memory. Each access opens and closes
    the maps, so a long epoch does not accumulate mapped pages in the reading process.
    Indexing, len, shape and .to() behave like the decoded tensor's; pickles as paths only
    (DataLoader workers)."""

    def __init__(self, directory: Path, field: str, files: list[dict], stored_dtype: str,
                 row_shape: list[int], decode: dict | None = None):
        self.directory, self.field, self.decode = Path(directory), field, decode
        self.files = [f["file"] for f in files]
        self.starts = [0]
        for f in files:
            self.starts.append(self.starts[-1] + int(f["rows"]))
        self.stored_dtype = getattr(torch, stored_dtype)
        self.shape = torch.Size([self.starts[-1], *row_shape])
        self.dtype = torch.float32 if decode else self.stored_dtype
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    def stored_nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty(0, dtype=self.stored_dtype).element_size()

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self[torch.tensor([index])][0]
        if isinstance(index, slice):
            rows = torch.arange(len(self))[index]
        else:
            rows = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        return decode_rows(self._read(rows), self.decode)

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        from safetensors import safe_open

        n = len(self)
        if len(rows) and (int(rows.min()) < -n or int(rows.max()) >= n):
            raise IndexError(f"row index out of range for {len(self)} rows of {self.field!r}")
        rows = torch.where(rows < 0, rows + n, rows)
        out = torch.empty((len(rows), *self.shape[1:]), dtype=self.stored_dtype)
        shard_of = torch.searchsorted(torch.tensor(self.starts[1:]), rows, right=True)
        for s in torch.unique(shard_of).tolist():
            pick = (shard_of == s).nonzero().squeeze(1)
            local = rows[pick] - self.starts[s]
            with safe_open(str(self.directory / self.files[s]), framework="pt") as fh:
                mapped = fh.get_tensor(self.field)
                out[pick] = mapped[local]
                del mapped
        return out

    def stored(self) -> "MappedRows":
        """The same rows read as stored (uint8, float16): for decoding elsewhere, e.g. on the device."""
        return _undecoded(self)

    def materialise(self) -> torch.Tensor:
        return self[:]

    def to(self, *args, **kwargs) -> torch.Tensor:
        return self.materialise().to(*args, **kwargs)


def load_groups(directory: Path, in_memory_bytes: int) -> tuple[dict[str, Any], dict[str, dict]]:
    """All fields of a sharded folder: tensors in memory when a field's decoded size is within
    `in_memory_bytes`, else MappedRows. Returns (tensors by key, decode specs by key)."""
    directory = Path(directory)
    tensors: dict[str, Any] = {}
    decode: dict[str, dict] = {}
    for group, entry in read_index(directory).items():
        for field, spec in entry["fields"].items():
            key = field if group == PLAIN_GROUP else f"{group}/{field}"
            if spec.get("decode"):
                decode[key] = spec["decode"]
            if any(s["rows"] is None for s in entry["shards"]):
                tensors[key] = _whole(directory / entry["shards"][0]["file"], field)
                continue
            mapped = MappedRows(directory, field, entry["shards"], spec["dtype"], spec["row_shape"])
            small = not spec["row_shape"]  # one number per row (labels, lengths): always held
            if small or mapped.numel() * (4 if spec.get("decode") else mapped.element_size()) <= in_memory_bytes:
                tensors[key] = _concat(mapped)
            else:
                tensors[key] = mapped
    return tensors, decode


def _whole(path: Path, field: str) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor(field).clone()


def _concat(mapped: MappedRows) -> torch.Tensor:
    parts = [_whole(mapped.directory / f, mapped.field) for f in mapped.files]
    if not parts:  # a split with no rows has no shard
        return torch.empty((0, *mapped.shape[1:]), dtype=mapped.stored_dtype)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _undecoded(value: MappedRows) -> MappedRows:
    out = copy.copy(value)
    out.decode, out.dtype = None, out.stored_dtype
    return out


def with_decode(value: Any, spec: dict | None) -> Any:
    """The model-facing form of a stored field: decoded tensor, or MappedRows that decode per read."""
    if isinstance(value, MappedRows):
        if not spec:
            return value
        out = copy.copy(value)
        out.decode, out.dtype = spec, torch.float32
        return out
    return decode_rows(value, spec)
