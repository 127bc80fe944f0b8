"""Training checkpoints without pickle: one folder per checkpoint, committed by its manifest.

Layout inside a checkpoint directory (one per model and input fingerprint):

    ckpt-epoch0005/                after 5 completed epochs
    ckpt-epoch0005-step000012/     interrupted 12 steps into the sixth epoch (SIGINT/SIGTERM)
        state.safetensors          every tensor: model.*, best.*, optim.state.*, ...
        state.json                 everything else: optimiser param_groups, scheduler state,
                                   RNG states (lists / ints / base64), epoch, history, best metric
        manifest.json              format marker + sha256 of both files, written last

A folder is built under a hidden temporary name and renamed into place (atomic.atomic_dir);
inside it the manifest is written last, so a folder without a manifest whose checksums match
is never used. Nested state (state_dicts) is flattened: each tensor goes to the safetensors
file under its dotted path and is replaced in the JSON by {"__tensor__": key}; dicts with
non-string keys (optimiser state is keyed by parameter index) are stored as key/value pairs.

Retention keeps the newest `keep_last` checkpoints plus the one holding the best epoch, and
deletes others only after a new checkpoint is committed. Saving, pruning and picking the resume
point hold an exclusive lock on the directory's `.lock` file, so two runs of the same model
and inputs (same directory) never rename onto or delete each other's folders mid-write. Only folders named like the above
are ever read; anything else (a `.pt` file, say) is ignored and never unpickled.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from unified_pipeline import atomic
from unified_pipeline.errors import IntegrityError
from unified_pipeline.file_lock import FileLock
from unified_pipeline.hashing import sha256_file

FORMAT = "unified-pipeline-checkpoint"
VERSION = 1
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"^ckpt-epoch(\d{4,})(?:-step(\d{6,}))?$")
_TENSOR = "__tensor__"
_PAIRS = "__pairs__"
_TUPLE = "__tuple__"


def checkpoint_name(epoch: int, step: int = 0) -> str:
    return f"ckpt-epoch{epoch:04d}" + (f"-step{step:06d}" if step else "")


def parse_name(name: str) -> tuple[int, int] | None:
    """(completed epochs, steps into the next epoch) for a checkpoint folder name, else None."""
    m = _NAME.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


# -- flattening nested state into (JSON tree, tensors) ----------------------------------------

def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        # Clone: state_dicts may share storage (tied weights), which safetensors refuses.
        tensors[prefix] = obj.detach().cpu().clone().contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten(v, _join(prefix, k), tensors) for k, v in obj.items()}
        return {_PAIRS: [[k, flatten(v, _join(prefix, k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [flatten(v, _join(prefix, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, _join(prefix, i), tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        return obj.item()
    raise TypeError(f"checkpoint state at {prefix!r} has unsupported type {type(obj).__name__}")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            key = obj[_TENSOR]
            if key not in tensors:
                raise IntegrityError(f"{where}: tensor {key!r} referenced in {STATE_FILE} is missing")
            return tensors[key]
        if _PAIRS in obj:
            return {k: unflatten(v, tensors, where) for k, v in obj[_PAIRS]}
        if _TUPLE in obj:
            return tuple(unflatten(v, tensors, where) for v in obj[_TUPLE])
        return {k: unflatten(v, tensors, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors, where) for v in obj]
    return obj


# -- RNG states as JSON ------------------------------------------------------------------------

def rng_state_to_text(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def rng_state_from_text(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng(shuffle: torch.Generator | None = None) -> dict[str, Any]:
    import random

    import numpy as np

    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": rng_state_to_text(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda": [rng_state_to_text(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    if shuffle is not None:
        out["shuffle"] = rng_state_to_text(shuffle.get_state())
    return out


def restore_rng(state: dict[str, Any], shuffle: torch.Generator | None = None) -> None:
    import random

    import numpy as np

    torch.set_rng_state(rng_state_from_text(state["torch"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([rng_state_from_text(s) for s in cuda])
    if shuffle is not None and "shuffle" in state:
        shuffle.set_state(rng_state_from_text(state["shuffle"]))


# -- writing and reading -----------------------------------------------------------------------

@dataclass
class Checkpoint:
    path: Path
    epoch: int  # completed epochs
    step: int  # steps into the next epoch (0 at an epoch boundary)
    state: dict[str, Any]  # everything, tensors put back in place


LOCK_FILE = ".lock"


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive lock of a checkpoint folder through its `.lock` file (file_lock.py: NFS-safe);
    released when the holder dies. Dot-names are never taken for checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(directory / LOCK_FILE):
        yield


def save_checkpoint(directory: Path, epoch: int, step: int, state: dict[str, Any]) -> Path:
    """Write `state` (nested dicts of tensors and JSON values) as one committed checkpoint folder."""
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(state, "", tensors)
    with directory_lock(directory):
        return _commit(Path(directory), epoch, step, tree, tensors)


def _commit(directory: Path, epoch: int, step: int, tree: Any, tensors: dict[str, torch.Tensor]) -> Path:
    name = checkpoint_name(epoch, step)
    target = directory / name
    stale: Path | None = None
    if target.exists():
        # A checkpoint that resume skipped (corrupt, or from an abandoned line), or the same one
        # committed by a concurrent run of the same inputs.
        stale = directory / f".stale-{name}"
        shutil.rmtree(stale, ignore_errors=True)
        target.rename(stale)
    try:
        with atomic.atomic_dir(target) as tmp:
            atomic.save_safetensors(tmp / TENSORS_FILE, tensors, metadata={"format": FORMAT})
            atomic.write_json(tmp / STATE_FILE, tree)
            atomic.write_json(
                tmp / MANIFEST_FILE,
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "epoch": epoch,
                    "step": step,
                    "files": {f: sha256_file(tmp / f) for f in (TENSORS_FILE, STATE_FILE)},
                },
            )
    except BaseException:
        if stale is not None and not target.exists():  # a failed write must not cost the old folder
            stale.rename(target)
        raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify one checkpoint folder; anything not in this format raises IntegrityError."""
    from safetensors.torch import load_file

    path = Path(path)
    parsed = parse_name(path.name)
    if parsed is None or not path.is_dir():
        raise IntegrityError(
            f"{path}: not a checkpoint of this pipeline (expected a folder named like "
            f"'ckpt-epoch0005' holding {MANIFEST_FILE}); pickle files such as .pt/.pth are never loaded"
        )
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{manifest_path}: unreadable or missing manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IntegrityError(f"{manifest_path}: format is not {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise IntegrityError(f"{manifest_path}: unsupported checkpoint version {manifest.get('version')!r}")
    files = manifest.get("files") or {}
    for name in (TENSORS_FILE, STATE_FILE):
        f = path / name
        if name not in files:
            raise IntegrityError(f"{manifest_path}: no checksum recorded for {name}")
        try:
            digest = sha256_file(f)
        except OSError as exc:
            raise IntegrityError(f"{f}: missing or unreadable ({exc})") from exc
        if digest != files[name]:
            raise IntegrityError(f"{f}: sha256 {digest[:12]}... does not match manifest {str(files[name])[:12]}...")
    try:
        tree = json.loads((path / STATE_FILE).read_text())
        tensors = load_file(str(path / TENSORS_FILE), device=str(device))
    except Exception as exc:  # checksums matched, so this is a writer bug, still reported per file
        raise IntegrityError(f"{path}: cannot decode checkpoint ({exc})") from exc
    return Checkpoint(path, int(manifest["epoch"]), int(manifest["step"]), unflatten(tree, tensors, str(path)))


def list_checkpoints(directory: Path) -> list[tuple[tuple[int, int], Path]]:
    """Checkpoint folders by (epoch, step), oldest first; other entries are not considered."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        key = parse_name(p.name)
        if key is not None and p.is_dir():
            found.append((key, p))
    return sorted(found)


def foreign_entries(directory: Path) -> list[Path]:
    """Entries that are not ours (e.g. a dropped-in .pt file): reported, never read."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir()
        if not p.name.startswith(".") and not (parse_name(p.name) is not None and p.is_dir())
    )


def latest_valid(directory: Path, log: Any = None, device: str | torch.device = "cpu") -> Checkpoint | None:
    """Newest checkpoint whose checksums verify; broken newer ones are skipped with a warning."""
    log = log or logging.getLogger(__name__)
    if not Path(directory).is_dir():
        return None
    with directory_lock(directory):
        return _latest_valid(Path(directory), log, device)


def _latest_valid(directory: Path, log: Any, device: str | torch.device) -> Checkpoint | None:
    for p in foreign_entries(directory):
        log.warning(f"checkpoint folder {directory}: ignoring {p.name} (not a checkpoint of this pipeline; never unpickled)")
    for _key, path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path, device=device)
        except IntegrityError as exc:
            log.warning(f"skipping checkpoint {path}: {exc}")
    return None


def prune(directory: Path, keep_last: int, current: tuple[int, int], best_epoch: int | None) -> list[Path]:
    """Delete checkpoints beyond the newest `keep_last` (up to `current`) and the best one.

    Checkpoints newer than `current` were skipped by resume (broken or abandoned) and go too,
    as do half-built folders left by a killed process.
    """
    directory = Path(directory)
    with directory_lock(directory):
        return _prune(directory, keep_last, current, best_epoch)


def _prune(directory: Path, keep_last: int, current: tuple[int, int], best_epoch: int | None) -> list[Path]:
    entries = list_checkpoints(directory)
    older = [(k, p) for k, p in entries if k <= current]
    keep = {p for _k, p in older[-max(1, keep_last):]}
    if best_epoch is not None:
        keep |= {p for k, p in older if k == (best_epoch, 0)}
    removed = []
    for _k, p in entries:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    for p in directory.glob(".ckpt-epoch*.partial"):
        shutil.rmtree(p, ignore_errors=True)
    for p in directory.glob(".stale-ckpt-epoch*"):
        shutil.rmtree(p, ignore_errors=True)
    return removed
