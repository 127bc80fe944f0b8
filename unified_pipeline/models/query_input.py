"""JSON query inputs for `predict`: inline objects, .json files or .jsonl files, named per item.

The command line hands each model a list of strings. An inline object is its own item name;
a .json file is one item named by its path; a .jsonl file gives one item per non-blank line,
named `path:line`, so a result can always be traced back to where its query came from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unified_pipeline.errors import ConfigError


def json_items(inputs: list[str], what: str) -> list[tuple[str, dict]]:
    """(item name, JSON object) for every query in `inputs`; one clear error for anything else."""
    items: list[tuple[str, dict]] = []
    for text in inputs:
        stripped = text.strip()
        if stripped.startswith("{"):
            items.append((text, json_object(stripped, f"{what}: inline input")))
            continue
        path = Path(stripped)
        if not path.is_file():
            raise ConfigError(f"{what}: input {text!r} is neither a JSON object nor an existing .json/.jsonl file")
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{what}: cannot read {path}: {exc}") from exc
        if path.suffix.lower() == ".jsonl":
            lines = [(n, line) for n, line in enumerate(content.splitlines(), 1) if line.strip()]
            if not lines:
                raise ConfigError(f"{what}: {path} holds no records")
            items.extend((f"{path}:{n}", json_object(line, f"{what}: {path}: line {n}")) for n, line in lines)
        else:
            items.append((str(path), json_object(content, f"{what}: {path}")))
    return unique_names(items)


def short(name: str, limit: int = 60) -> str:
    """An item name fit for an error message (inline JSON can be long)."""
    return name if len(name) <= limit else name[: limit - 3] + "..."


def json_object(text: str, where: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(obj).__name__}")
    return obj


def unique_names(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Results are keyed by item name, so a repeated input gets ' #2', ' #3', ... instead of vanishing."""
    seen: dict[str, int] = {}
    out = []
    for name, value in items:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name} #{seen[name]}", value))
    return out


def number_list(obj: dict, key: str, where: str, length: int | None = None) -> list[float]:
    """obj[key] as a list of finite numbers (of `length` when given)."""
    value = obj.get(key)
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise ConfigError(f"{where}: field {key!r} must be a list of numbers, got {json.dumps(value)[:80]}")
    if length is not None and len(value) != length:
        raise ConfigError(f"{where}: field {key!r} has {len(value)} values, expected {length}")
    return [float(v) for v in value]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
