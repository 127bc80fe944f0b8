"""What every dataset kind provides, and the on-disk tensor format that models read.

A dataset kind (vision, audio, text, transitions, causal, memory) is a module-level object
implementing `DatasetKind`. The Dagster assets never look inside a kind: they call
`detect`, `build_manifest`, `build_tensors` and `generate_samples`, and run the kind's
Great Expectations suite from `unified_pipeline.quality`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from unified_pipeline import atomic
from unified_pipeline.errors import DatasetError

TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
# Fields whose model input is bigger than this stay on disk when loaded (MappedRows), and the
# trainer streams them; smaller ones load whole, as on-device training wants.
IN_MEMORY_BYTES = int(os.environ.get("UNIFIED_TENSORS_IN_MEMORY_BYTES", str(1 << 30)))


@dataclass
class PreprocessConfig:
    """Knobs shared by all kinds; a kind reads the ones it needs and ignores the rest."""

    seed: int = 0
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    image_size: int = 0  # 0: keep the dataset's own size (all images must then agree)
    sample_rate: int = 16000
    n_mels: int = 40
    max_audio_seconds: float = 1.5
    max_text_len: int | str = "auto"  # characters; "auto" chooses from the data (datasets/text.py)
    extra: dict[str, Any] = field(default_factory=dict)
    # Where per-file progress goes (a Dagster context.log or a logger); not a preprocessing knob.
    log: Any = field(default=None, compare=False, repr=False)
    # Where per-file facts read for a manifest are remembered (a PreprocessCache; None: nowhere).
    facts_cache: Any = field(default=None, compare=False, repr=False)
    # The files' stats and the folder's previous manifest (manifest_files.FolderScan), when the
    # caller has them: a kind takes an unchanged file's row from that manifest.
    scan: Any = field(default=None, compare=False, repr=False)


@dataclass
class TensorBundle:
    """Preprocessed dataset: named tensors (`<split>/<field>` or plain names) plus JSON facts.

    `tensors` hold the stored form (uint8 pixels, float16 features, or MappedRows over shard
    files when a field is too big to hold); `decode` says how a stored field becomes model
    input, and `split()` returns that model input. On disk: shards (datasets/shards.py).
    """

    tensors: dict[str, Any]
    meta: dict[str, Any]
    sidecars: dict[str, Any] = field(default_factory=dict)  # extra JSON files, e.g. raw texts per split
    decode: dict[str, dict] = field(default_factory=dict)  # key or field name -> shards.decode_rows spec

    def split(self, name: str) -> dict[str, Any]:
        """The split's fields as model input: decoded tensors, or MappedRows (decoded per read)
        for a field kept on disk; the trainer streams those through a DataLoader."""
        from unified_pipeline.datasets.shards import with_decode

        prefix = f"{name}/"
        return {k[len(prefix):]: with_decode(v, self.decode.get(k) or self.decode.get(k[len(prefix):]))
                for k, v in self.tensors.items() if k.startswith(prefix)}

    def save(self, directory: str | Path) -> Path:
        """Write into `directory` (which the caller creates atomically via atomic.atomic_dir)."""
        from unified_pipeline.datasets.shards import write_groups

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_groups(directory, {k: v.materialise() if hasattr(v, "materialise") else v
                                 for k, v in self.tensors.items()}, self.decode)
        self.save_json(directory)
        return directory

    def save_json(self, directory: Path) -> None:
        atomic.write_json(Path(directory) / META_FILE, self.meta)
        for name, obj in self.sidecars.items():  # (compact: indenting takes json's pure-Python encoder,
            # 20 ms for the sample ids of 18,000 files)
            atomic.write_text(Path(directory) / f"{name}.json",
                              json.dumps(obj, separators=(",", ":"), default=atomic.json_default))

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", in_memory_bytes: int | None = None) -> "TensorBundle":
        """Read a tensors folder. A field whose decoded size exceeds `in_memory_bytes` (default
        IN_MEMORY_BYTES) stays on disk as MappedRows. Folders from before sharding (one
        tensors.safetensors) load whole, as they were written."""
        from unified_pipeline.datasets.shards import INDEX_FILE, load_groups

        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        decode: dict[str, dict] = {}
        if (directory / TENSORS_FILE).exists() or not (directory / INDEX_FILE).exists():
            from safetensors.torch import load_file

            tensors = load_file(str(directory / TENSORS_FILE), device=device)
        else:
            budget = IN_MEMORY_BYTES if in_memory_bytes is None else in_memory_bytes
            tensors, decode = load_groups(directory, budget)
            if device != "cpu":
                tensors = {k: v.to(device) if isinstance(v, torch_tensor_type()) else v for k, v in tensors.items()}
        sidecars = {
            p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))
            if p.name not in (META_FILE, INDEX_FILE)
        }
        return cls(tensors=tensors, meta=meta, sidecars=sidecars, decode=decode)


def torch_tensor_type():
    import torch

    return torch.Tensor


class DatasetKind(Protocol):
    name: str  # "vision", "audio", ...
    description: str

    def detect(self, root: Path) -> bool:
        """True if the folder looks like this kind (checked cheaply: names and extensions only)."""

    def build_manifest(self, root: Path, file_hashes: dict[str, str],
                       cfg: PreprocessConfig | None = None) -> pd.DataFrame:
        """One row per sample. Columns: sample_id, path (relative), label (or None), sha256
        (content hash of the sample), size, split, plus decoded facts. `split` is the one
        `build_tensors` assigns under the same cfg (seed, fractions; defaults when None).
        Files that cannot be decoded stay in the manifest with decodable=False and
        error=<reason> so the quality suite names them; layout problems that leave nothing to
        check raise DatasetError."""

    def build_tensors(self, root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig) -> TensorBundle:
        """Decode, resample, normalise, tokenise the manifest's samples into a TensorBundle."""

    def generate_samples(self, raw_root: Path, seed: int = 0) -> list[Path]:
        """Write this kind's built-in sample dataset(s) as sub-folders of `raw_root`
        (deterministic from the seed, offline, each folder written atomically) and return them."""


def require_columns(df: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")
