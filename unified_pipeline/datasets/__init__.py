"""Dataset kinds and the discovery of raw datasets under the raw root.

A dataset is a sub-folder of the raw root. Its kind comes from an optional `dataset.json`
(`{"kind": "audio"}`, plus any preprocessing settings for this dataset) or else from the
first kind whose `detect` accepts the folder. Discovery only lists names and extensions
(and reads CSV/JSONL header lines), so importing the Dagster definitions stays cheap.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from unified_pipeline.errors import DatasetError
from unified_pipeline.hashing import list_files
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


def read_settings(root: Path) -> dict:
    """The folder's dataset.json as a dict ({} when absent)."""
    settings = Path(root) / SETTINGS_FILE
    if not settings.exists():
        return {}
    try:
        data = json.loads(settings.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{settings}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "kind" not in data:
        raise DatasetError(f"{settings}: expected a JSON object with a 'kind' field, found {data!r:.80}")
    return data


def dataset_settings(root: Path) -> dict:
    """Preprocessing settings from dataset.json: every key but `kind`, overriding the preset's
    `data_preprocessing.<kind>` for this one dataset (e.g. `"labels": ["cat", "dog"]`)."""
    return {k: v for k, v in read_settings(root).items() if k != "kind"}


def detect_kind(root: Path) -> str:
    settings = read_settings(root)
    if settings:
        get_kind(settings["kind"])
        return settings["kind"]
    for kind in KIND_MODULES:
        if get_kind(kind).detect(root):
            return kind
    raise not_recognised(root)


def accepted_extensions() -> tuple[str, ...]:
    from unified_pipeline.datasets.audio import AUDIO_EXTENSIONS
    from unified_pipeline.datasets.text import TEXT_EXTENSIONS
    from unified_pipeline.datasets.vision import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS + AUDIO_EXTENSIONS + TEXT_EXTENSIONS


def not_recognised(root: Path) -> DatasetError:
    """Why no kind accepts the folder, naming a file when one is of a type no kind reads."""
    where = (f"see data/README.md for the accepted layouts, or add {SETTINGS_FILE} with "
             f"{{\"kind\": one of {sorted(KIND_MODULES)}}}")
    files = [p.relative_to(root).as_posix() for p in list_files(root)]
    if not files:
        return DatasetError(f"{root}: dataset folder holds no files; {where}")
    accepted = accepted_extensions()
    unknown = [f for f in files if Path(f).suffix.lower() not in accepted]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        return DatasetError(f"{root / unknown[0]}: unknown file type {Path(unknown[0]).suffix or '(none)'!r}{more}; "
                            f"accepted: {', '.join(accepted)}; {where}")
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    tables = [f for f in files if Path(f).suffix.lower() in (".csv", ".jsonl")]
    if tables and len(tables) == len(files):
        return DatasetError(f"{root}: cannot tell which kind of dataset this is: {_columns_found(root, tables)}; "
                            f"{TABLE_KINDS_NEED}; {where}")
    return DatasetError(f"{root}: cannot tell which kind of dataset this is from its files ({shown}); {where}")


# What each kind of table-shaped dataset needs, said when a CSV / JSONL folder fits none of them.
TABLE_KINDS_NEED = ("a text dataset needs columns `text` and `label`; transitions need `state_*`, `action_*`, "
                    "`next_state_*` and `reward`; causal data is one CSV of numeric columns; memory records "
                    "are JSONL objects with `source_memory_id` and `base_gist`")


def _columns_found(root: Path, tables: list[str]) -> str:
    from unified_pipeline.datasets.table_files import header_fields

    parts = []
    for rel in tables[:3]:
        found = header_fields(root / rel)
        parts.append(f"{rel} has columns {', '.join(found) if found else '(none readable)'}")
    return "; ".join(parts) + (f" (and {len(tables) - 3} more files)" if len(tables) > 3 else "")


def check_folder(root: Path, sub: Path) -> None:
    """A dataset folder must be a plain name under the raw root, not a link to elsewhere."""
    check_name(sub.name, "dataset name")
    try:
        inside(root, sub.name)
    except ValueError as exc:
        raise DatasetError(f"{sub}: links to {sub.resolve()}, outside the raw root {root}; "
                           "copy the data in instead of linking it") from exc


def scan(root: Path | None = None) -> tuple[list[DatasetRef], dict[Path, str]]:
    """Every visible folder under the raw root, sorted by name: the datasets, and the folders
    that are not datasets with the reason (which names the folder or the offending file)."""
    root = Path(root) if root else raw_root()
    found: list[DatasetRef] = []
    problems: dict[Path, str] = {}
    if not root.is_dir():
        return found, problems
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            check_folder(root, sub)
            found.append(DatasetRef(sub.name, detect_kind(sub), sub))
        except (DatasetError, ValueError) as exc:
            problems[sub] = str(exc) if str(sub) in str(exc) else f"{sub}: {exc}"
    return found, problems


def discover(root: Path | None = None, strict: bool = False) -> list[DatasetRef]:
    """Every dataset folder under the raw root, sorted by name.

    Folders that cannot be classified are left out (strict=False) so that one bad folder does
    not hide the good lanes; `undetected` says why, and the Dagster definitions give each of
    them an asset that fails with that reason.
    """
    found, problems = scan(root)
    if strict and problems:
        raise DatasetError("; ".join(problems.values()))
    return found


def undetected(root: Path | None = None) -> dict[str, str]:
    """Folders under the raw root that are not datasets, with the reason."""
    return {sub.name: why for sub, why in scan(root)[1].items()}
