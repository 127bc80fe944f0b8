"""Checksum verification of a registered version's files."""
from __future__ import annotations

from unified_pipeline.errors import IntegrityError
from unified_pipeline.hashing import sha256_file
from unified_pipeline.registry.index import VERSION_FILE
from unified_pipeline.registry.versions import Version


def check_files(v: Version) -> None:
    """Every recorded file present with its recorded sha256, and no file added; IntegrityError otherwise."""
    present = {p.relative_to(v.path).as_posix() for p in v.path.rglob("*") if p.is_file()} - {VERSION_FILE}
    missing = sorted(set(v.files) - present)
    if missing:
        raise IntegrityError(f"{v.name}: file {v.path / missing[0]} is missing")
    extra = sorted(present - set(v.files))
    if extra:
        raise IntegrityError(f"{v.name}: unexpected file {v.path / extra[0]} (not in the recorded version)")
    for rel, rec in sorted(v.files.items()):
        actual = sha256_file(v.path / rel)
        if actual != rec["sha256"]:
            raise IntegrityError(
                f"{v.name}: {v.path / rel} has sha256 {actual}, recorded {rec['sha256']}; refusing to load"
            )
