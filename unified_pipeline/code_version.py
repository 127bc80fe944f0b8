"""Code versions: sha256 of the source files a step runs, read without importing them."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from unified_pipeline.hashing import combine, sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin else None


@lru_cache(maxsize=None)
def code_version(*modules: str, packages: tuple[str, ...] = ()) -> str:
    """Digest of the named modules' files plus every .py file in the named sub-packages."""
    files: list[Path] = []
    for m in modules:
        f = module_file(m)
        if f:
            files.append(f)
    for pkg in packages:
        files += sorted((PACKAGE_DIR / pkg).rglob("*.py"))
    return combine(f"{p.relative_to(PACKAGE_DIR).as_posix()}:{sha256_file(p)}" for p in files)[:16]
