"""Dataset kinds and the discovery of raw datasets under the raw root.

A dataset is a sub-folder of the raw root. Its kind comes from an optional `dataset.json`
(`{"kind": "audio"}`) or else from the first kind whose `detect` accepts the folder.
Discovery only lists names and extensions, so importing the Dagster definitions stays cheap.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from unified_pipeline.errors import DatasetError
from unified_pipeline.paths import check_name, inside, raw_root

# Order matters for detection: folder layouts first, then file-based kinds from most to least specific.
KIND_MODULES: dict[str, str] = {
    "vision": "unified_pipeline.datasets.vision",
    "audio": "unified_pipeline.datasets.audio",
    "transitions": "unified_pipeline.datasets.transitions",
    "memory": "unified_pipeline.datasets.memory",
    "text": "unified_pipeline.datasets.text",
    "causal": "unified_pipeline.datasets.causal",
}
SETTINGS_FILE = "dataset.json"


@dataclass(frozen=True)
class DatasetRef:
    name: str
    kind: str
    root: Path


def get_kind(kind: str):
    if kind not in KIND_MODULES:
        raise DatasetError(f"unknown dataset kind {kind!r}; known kinds: {sorted(KIND_MODULES)}")
    return importlib.import_module(KIND_MODULES[kind]).KIND


def detect_kind(root: Path) -> str:
    settings = root / SETTINGS_FILE
    if settings.exists():
        try:
            kind = json.loads(settings.read_text(encoding="utf-8"))["kind"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{settings}: expected a JSON object with a 'kind' field ({exc})") from exc
        get_kind(kind)
        return kind
    for kind in KIND_MODULES:
        if get_kind(kind).detect(root):
            return kind
    raise DatasetError(
        f"{root}: cannot tell which kind of dataset this is; see data/README.md for the accepted layouts "
        f"or add {SETTINGS_FILE} with {{\"kind\": one of {sorted(KIND_MODULES)}}}"
    )


def check_folder(root: Path, sub: Path) -> None:
    """A dataset folder must be a plain name under the raw root, not a link to elsewhere."""
    check_name(sub.name, "dataset name")
    try:
        inside(root, sub.name)
    except ValueError as exc:
        raise DatasetError(f"{sub}: links to {sub.resolve()}, outside the raw root {root}; "
                           "copy the data in instead of linking it") from exc


def discover(root: Path | None = None, strict: bool = False) -> list[DatasetRef]:
    """Every dataset folder under the raw root, sorted by name.

    Folders that cannot be classified are skipped (strict=False) so that one bad folder does
    not hide the good lanes; `unified-pipeline data` reports them.
    """
    root = Path(root) if root else raw_root()
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            check_folder(root, sub)
            found.append(DatasetRef(sub.name, detect_kind(sub), sub))
        except (DatasetError, ValueError):
            if strict:
                raise
    return found


def undetected(root: Path | None = None) -> dict[str, str]:
    """Folders under the raw root that are not datasets, with the reason."""
    root = Path(root) if root else raw_root()
    out = {}
    if root.is_dir():
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                check_folder(root, sub)
                detect_kind(sub)
            except (DatasetError, ValueError) as exc:
                out[sub.name] = str(exc)
    return out
