"""Code versions: a digest of the source a step runs, read without importing it.

A step runs its own module and everything that module imports from this package, at the top or
inside a function, so the digest covers that import closure (found with `ast`, nothing is
executed), plus the installed versions of the libraries whose numerics decide the results.
Editing a shared helper therefore changes exactly the steps that reach it.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from functools import lru_cache
from pathlib import Path

from unified_pipeline.hashing import combine, sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
# Libraries whose upgrade can change a trained model's numbers or a tensor's bytes.
NUMERIC_LIBRARIES = ("torch", "torchvision", "torchaudio", "numpy", "scipy", "scikit-learn", "pandas",
                     "safetensors", "pillow", "soundfile")


def module_file(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec and spec.origin else None


def _file_of(module: str, package_dir: Path, package: str) -> Path | None:
    """The source file of a module of the package, without importing anything."""
    if module != package and not module.startswith(package + "."):
        return None
    rel = Path(*module.split(".")[1:])
    if module == package:
        return package_dir / "__init__.py"
    for candidate in (package_dir / rel.with_suffix(".py"), package_dir / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, package_dir: Path, package: str) -> str:
    parts = path.relative_to(package_dir).with_suffix("").parts
    return ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _imported(path: Path, package_dir: Path, package: str) -> frozenset[str]:
    """Module names this file imports (absolute or relative), including `from pkg import submodule`;
    parsed once per version of the file, whichever code versions it takes part in."""
    st = path.stat()
    return _parsed_imports(path, st.st_mtime_ns, st.st_size, package_dir, package)


@lru_cache(maxsize=None)
def _parsed_imports(path: Path, _mtime_ns: int, _size: int, package_dir: Path, package: str) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, package_dir, package)
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import mod` needs mod (pkg only runs first); else pkg itself
                sub = f"{source}.{alias.name}"
                names.add(sub if _file_of(sub, package_dir, package) else source)
    return frozenset(names)


def import_closure(modules: tuple[str, ...], package_dir: Path = PACKAGE_DIR, package: str = PACKAGE) -> list[Path]:
    """Every source file of the package that the modules reach by imports.

    The `__init__.py` of each enclosing package runs first on import and is hashed too, but its
    own imports are followed only when a module imports from that package by name: a package that
    gathers its submodules would otherwise tie every sibling to every other.
    """
    seen: set[Path] = set()  # files whose imports were followed
    enclosing: set[Path] = set()  # package __init__ files hashed for running first
    todo = [f for m in modules if (f := _file_of(m, package_dir, package))]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        name = _module_name(path, package_dir, package).split(".")
        enclosing.update(_file_of(".".join(name[:i]), package_dir, package) or path for i in range(1, len(name)))
        for module in _imported(path, package_dir, package):
            found = _file_of(module, package_dir, package)
            if found and found not in seen:
                todo.append(found)
    return sorted(seen | enclosing)


@lru_cache(maxsize=None)  # what a process has loaded does not change under it (18 ms a call)
def library_versions() -> tuple[str, ...]:
    found = []
    for name in NUMERIC_LIBRARIES:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} absent")
    return tuple(found)


@lru_cache(maxsize=None)
def code_version(*modules: str, packages: tuple[str, ...] = ()) -> str:
    """Digest of the named modules' import closure, every .py file in the named sub-packages (and
    what they import), and the numeric libraries' versions."""
    roots = list(modules)
    for pkg in packages:
        roots += [_module_name(p, PACKAGE_DIR, PACKAGE) for p in sorted((PACKAGE_DIR / pkg).rglob("*.py"))]
    digest = closure_digest(tuple(roots))
    # A model module kept outside the package (models/spec.py allows it) is hashed itself too.
    outside = [f"{m}:{sha256_file(f)}" for m in modules if not _file_of(m, PACKAGE_DIR, PACKAGE) and (f := module_file(m))]
    return combine([digest, *outside])[:16] if outside else digest


def closure_digest(modules: tuple[str, ...], package_dir: Path = PACKAGE_DIR, package: str = PACKAGE) -> str:
    files = import_closure(modules, package_dir, package)
    return combine([*(f"{p.relative_to(package_dir).as_posix()}:{sha256_file(p)}" for p in files),
                    *library_versions()])[:16]
