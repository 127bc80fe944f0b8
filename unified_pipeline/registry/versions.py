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


def model_and_ref(model: str, ref: str | int | None = None) -> tuple[str, str | int | None]:
    """One spelling of a version for every command: `model/vN`, `model vN`, `model/production`,
    `model production`; a ref given both ways must agree."""
    name, inline = split_name(str(model).strip())
    if inline is not None and ref is not None and parse_ref(inline) != parse_ref(ref):
        raise RegistryError(f"{model!r} and {ref!r} name two versions; give one of them")
    return name, inline if inline is not None else ref


def version_pair(tokens: list[str]) -> tuple[str, str]:
    """`a b` for compare: `m/v1 m/v2`, `m/v1 v2` (same model), `m v1 v2`, `m v1 m2/v3`."""
    tokens = [t.strip() for t in tokens]
    if tokens and "/" not in tokens[0] and len(tokens) >= 2:
        first, rest = f"{tokens[0]}/{tokens[1]}", tokens[2:]
    else:
        first, rest = (tokens[0] if tokens else ""), tokens[1:]
    if len(rest) == 2 and "/" not in rest[0]:
        rest = [f"{rest[0]}/{rest[1]}"]
    if not first or len(rest) != 1:
        raise RegistryError(f"compare needs two versions, e.g. `vision_service/v1 vision_service/v2`, "
                            f"`vision_service/v1 v2` or `vision_service v1 v2`; got {' '.join(tokens)!r}")
    model = split_name(first)[0]
    second = rest[0] if "/" in rest[0] else f"{model}/{rest[0]}"
    for name in (first, second):
        parse_ref(split_name(name)[1])  # a bad reference fails here with the accepted forms
    return first, second


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
