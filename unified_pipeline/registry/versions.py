"""The `Version` record, version references ("v3", 3, "production", "latest") and lineage checks."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unified_pipeline.errors import ConfigError, PipelineError
from unified_pipeline.hashing import sha256_file

ALIASES = ("production", "latest")
# Keys a version's lineage must carry so that "what produced this model" is always answerable.
REQUIRED_LINEAGE = ("data_versions", "code_version", "hparams")
# Documented optional keys: scenario, preset ({name, version, sha256} of the preset file, see
# preset_lineage), parent ("model/vN" when warm-started), warm_start (see registry/incremental.py),
# upstream, run_id (Dagster run), seed, device, wall_time_s.
_REF_RE = re.compile(r"^v?(\d+)$")


class RegistryError(PipelineError):
    """A model or version that does not exist, or an operation the registry refuses."""


@dataclass
class Version:
    model: str
    number: int
    name: str  # "model/vN"
    path: Path
    created_at: str
    tag: str | None
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    fingerprint: str | None
    aliases: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> {sha256, size}
    size: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def version_name(model: str, number: int) -> str:
    return f"{model}/v{number}"


def parse_ref(ref: str | int | None) -> int | str | None:
    """A version number, an alias name, or None (production, else latest)."""
    if ref is None or isinstance(ref, int) and not isinstance(ref, bool):
        if isinstance(ref, int) and ref < 1:
            raise RegistryError(f"version numbers start at 1, got {ref}")
        return ref
    if not isinstance(ref, str):
        raise RegistryError(f"version reference must be 'vN', N, 'production' or 'latest', got {ref!r}")
    text = ref.strip()
    if text in ALIASES:
        return text
    m = _REF_RE.match(text)
    if not m or int(m.group(1)) < 1:
        raise RegistryError(f"bad version reference {ref!r}: use vN (N >= 1), 'production' or 'latest'")
    return int(m.group(1))


def split_name(name: str) -> tuple[str, str | None]:
    """'vision_service/v3' -> ('vision_service', 'v3'); 'vision_service' -> ('vision_service', None)."""
    model, _, ref = name.partition("/")
    return model, (ref or None)


def check_lineage(lineage: Any) -> dict[str, Any]:
    if not isinstance(lineage, dict):
        raise ConfigError(f"lineage must be a dict, got {type(lineage).__name__}")
    missing = [k for k in REQUIRED_LINEAGE if k not in lineage]
    if missing:
        raise ConfigError(f"lineage is missing required field(s) {missing}; required: {list(REQUIRED_LINEAGE)}")
    if not isinstance(lineage["hparams"], dict):
        raise ConfigError("lineage field 'hparams' must be a dict of resolved hyperparameters")
    parent = lineage.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"lineage field 'parent' must be 'model/vN' or None, got {parent!r}")
    return lineage


def preset_lineage(name: str, version: str, path: str | Path) -> dict[str, str]:
    """Which preset produced a version: its name and version, and the sha256 of the file as read."""
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read preset file to hash it ({exc.strerror or exc})") from exc
    return {"name": name, "version": version, "path": str(path), "sha256": digest}
