"""The per-model index (version numbers, aliases, alias history) and the append-only event log.

Both live in the model's registry folder. The index is the single source of truth for which
versions exist: a version folder that is not in the index is not a version. Callers hold the
model lock (`locking.model_lock`) around every read-modify-write of either file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unified_pipeline import atomic
from unified_pipeline.errors import IntegrityError

INDEX_FILE = "index.json"
EVENTS_FILE = "events.jsonl"
VERSION_FILE = "version.json"
FORMAT = 1
_KEYS = {"model": str, "next_number": int, "versions": dict, "aliases": dict, "alias_history": list, "tags": dict}


def empty_index(model: str) -> dict[str, Any]:
    return {"format": FORMAT, "model": model, "next_number": 1, "versions": {}, "aliases": {},
            "alias_history": [], "tags": {}}


def read_index(model_dir: Path, model: str) -> dict[str, Any]:
    path = model_dir / INDEX_FILE
    if not path.exists():
        return empty_index(model)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"registry index {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise IntegrityError(f"registry index {path} is not a JSON object")
    for key, typ in _KEYS.items():
        if not isinstance(data.get(key), typ):
            raise IntegrityError(f"registry index {path}: field {key!r} missing or not a {typ.__name__}")
    if data["model"] != model:
        raise IntegrityError(f"registry index {path} belongs to model {data['model']!r}, not {model!r}")
    return data


def write_index(model_dir: Path, index: dict[str, Any]) -> None:
    atomic.write_json(model_dir / INDEX_FILE, index)


def append_event(model_dir: Path, event: dict[str, Any]) -> None:
    """Add one JSON line. Existing lines are carried over byte for byte, so history never changes."""
    path = model_dir / EVENTS_FILE
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        raise IntegrityError(f"event log {path} does not end with a newline (truncated write?)")
    line = json.dumps(event, sort_keys=True, default=str) + "\n"
    atomic.write_bytes(path, old + line.encode("utf-8"))


def read_events(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"event log {path} line {n} is not JSON: {exc}") from exc
    return events
