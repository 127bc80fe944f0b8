"""Stop in one line when torch, torchvision and torchaudio do not belong together.

A torchaudio or torchvision built against another torch fails deep inside a step process
(`undefined symbol ...`), which the multiprocess executor reports only as an `EOFError` per step.
Reading the installed versions costs milliseconds, so the code location and the CLI check them
before anything runs; loading the compiled extensions is checked where the heavy imports happen.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from typing import Callable, Mapping

from unified_pipeline.errors import PipelineError

# What uv.lock pins and the GPU machine ships; tests keep this equal to pyproject.toml.
LOCKED = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"}
REPAIR = "make install (it runs `.tools/bin/uv sync --locked --extra dev`)"


class BrokenInstall(PipelineError):
    """The installed PyTorch libraries cannot work together."""

    hint = f"reinstall the locked versions: {REPAIR}"


def installed_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LOCKED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _split(version: str) -> tuple[tuple[int, ...], str]:
    public, _, local = version.partition("+")
    return tuple(int(p) for p in public.split(".")[:3] if p.isdigit()), local


def _describe(versions: Mapping[str, str | None]) -> str:
    return ", ".join(f"{n} {v or 'missing'}" for n, v in versions.items())


def mismatch(versions: Mapping[str, str | None]) -> str | None:
    """Why these versions cannot work together, or None.

    PyTorch releases the three in step: torchaudio carries torch's version and torchvision's
    minor is torch's plus 15 (torch 2.11.0 with torchvision 0.26.0); all three share one build
    (the `+cu130` or `+cpu` suffix).
    """
    if any(v is None for v in versions.values()):
        return "missing"
    (torch_v, torch_local), (vision_v, vision_local), (audio_v, audio_local) = (
        _split(versions[n]) for n in ("torch", "torchvision", "torchaudio"))
    if len(torch_v) < 3 or len(vision_v) < 3 or len(audio_v) < 3:
        return None  # a development build: nothing to compare against
    if audio_v != torch_v:
        return "torchaudio must carry torch's version"
    if vision_v != (0, torch_v[1] + 15, torch_v[2]):
        return f"torch {'.'.join(map(str, torch_v))} needs torchvision 0.{torch_v[1] + 15}.{torch_v[2]}"
    if len({torch_local, vision_local, audio_local}) > 1:
        return "the three come from different builds"
    return None


def require_consistent_install(versions: Mapping[str, str | None] | None = None) -> None:
    """Raise BrokenInstall naming the installed versions when they do not belong together."""
    versions = installed_versions() if versions is None else versions
    why = mismatch(versions)
    if why:
        raise BrokenInstall(f"PyTorch libraries do not belong together ({why}): {_describe(versions)}; "
                            f"this project locks {_describe(LOCKED)}")


def require_loadable_extensions(importer: Callable[[str], object] = importlib.import_module) -> None:
    """Import torchvision and torchaudio, turning a failed extension load into one line."""
    require_consistent_install()
    for name in ("torchvision", "torchaudio"):
        try:
            importer(name)
        except Exception as exc:  # undefined symbols surface as OSError, RuntimeError or ImportError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BrokenInstall(f"{name} cannot be loaded ({first}); installed: {_describe(installed_versions())}") from exc


# Dagster commands that load the code location in the user's own terminal and run a job there.
_RUN_COMMANDS = {"execute", "launch", "materialize"}


def check_at_code_location_load() -> None:
    """In `dagster job execute` / `dg launch` print the one line and exit; elsewhere (the UI's code
    server, tests) raise, so the UI shows the message as the code location's load error."""
    try:
        require_consistent_install()
    except BrokenInstall as exc:
        if os.path.basename(sys.argv[0]) in ("dagster", "dg") and _RUN_COMMANDS & set(sys.argv[1:]):
            print(f"error: {exc} (hint: {exc.hint})", file=sys.stderr)
            raise SystemExit(2) from None
        raise
