"""Where things live: the project root, the raw data root and the run-output root."""
from __future__ import annotations

import os
import re
from pathlib import Path

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class NameError_(ValueError):
    """A dataset or model name that is not a plain identifier."""


def project_root() -> Path:
    """The checkout that holds pyproject.toml (or the current directory when installed elsewhere)."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def unified_home() -> Path:
    """Root of everything a run produces (tensors, checkpoints, versions, caches)."""
    env = os.environ.get("UNIFIED_HOME")
    root = Path(env) if env else project_root() / ".unified"
    return root.resolve()


def raw_root() -> Path:
    """Folder holding one sub-folder per raw dataset."""
    env = os.environ.get("UNIFIED_DATA")
    root = Path(env) if env else project_root() / "data" / "raw"
    return root.resolve()


def check_name(name: str, what: str = "name") -> str:
    """Dataset and model names become folder names and asset keys, so they must not carry path parts."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise NameError_(
            f"invalid {what} {name!r}: use lower-case letters, digits and '_' (starting with a letter, at most 64)"
        )
    return name


def inside(root: Path, relative: str | Path) -> Path:
    """Resolve `relative` under `root`, refusing anything that escapes it (.., absolute paths, symlinks out)."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"path {str(relative)!r} escapes {root}")
    return target
