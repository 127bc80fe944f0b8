"""Live commands for a running fit through a small JSON control file.

A writer (CLI, UI, a person) calls `write_command(path, lr=1e-4)`, `write_command(path, pause=True)`,
`write_command(path, pause=False)` or `write_command(path, stop=True)`. The trainer's `LiveControl`
callback (callbacks.py) polls the file at step boundaries with one stat() and claims it by
renaming it away before reading, so a command written while another is being read is never lost
or applied twice, and a stale command cannot leak into a later run: a command already waiting
when a training step starts is dropped by `drop_stale` (the model was not training when it was
written).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from unified_pipeline import atomic
from unified_pipeline.errors import ConfigError

KNOWN = {"lr": (int, float), "pause": bool, "stop": bool}


def validate(cmd: dict[str, Any], where: str = "control command") -> dict[str, Any]:
    out = {}
    for key, value in cmd.items():
        if key in ("written_at",):
            continue
        if key not in KNOWN:
            raise ConfigError(f"{where}: unknown field {key!r}; valid: {sorted(KNOWN)}")
        if not isinstance(value, KNOWN[key]) or (key == "lr" and (isinstance(value, bool) or not value > 0)):
            raise ConfigError(f"{where}: field {key!r} has invalid value {value!r}")
        out[key] = float(value) if key == "lr" else value
    return out


def write_command(path: str | Path, **cmd: Any) -> Path:
    """Queue a command atomically; merges with a command not yet picked up."""
    path = Path(path)
    cmd = validate(cmd, f"{path}")
    pending: dict[str, Any] = {}
    try:
        pending = validate(json.loads(path.read_text()), str(path))
    except (OSError, ValueError, ConfigError):
        pending = {}
    return atomic.write_json(path, {**pending, **cmd, "written_at": time.time()})


class ControlPoller:
    """Claims and parses commands from one control file; returns None when there is nothing new."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.position: tuple[int, int] = (0, 0)  # (1-based epoch, steps done in it), set by the trainer

    def poll(self) -> dict[str, Any] | None:
        if self.path is None:
            return None
        try:
            os.stat(self.path)
        except OSError:
            return None
        claimed = self.path.with_name(f".{self.path.name}.claimed")
        try:
            os.replace(self.path, claimed)
        except OSError:
            return None
        try:
            raw = json.loads(claimed.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            return validate(raw, str(self.path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path}: unreadable control command ({exc})") from exc
        finally:
            try:
                claimed.unlink()
            except OSError:
                pass


def drop_stale(path: str | Path, started: float) -> dict[str, Any] | None:
    """Remove a command written before `started`; returns it (for the log) or None."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    written = raw.get("written_at") if isinstance(raw, dict) else None
    if isinstance(written, (int, float)) and written < started:
        try:
            path.unlink()
        except OSError:
            return None
        return raw
    return None


class RecordedCommands(ControlPoller):
    """Replays the commands a training applied, each at the (epoch, step) where it was applied.

    `applied`: the trainer's notes [{"epoch", "step", "command"}, ...]. Pauses are left out: they
    change when steps run, not what they compute.
    """

    def __init__(self, applied: list[dict[str, Any]]):
        super().__init__(None)
        self.pending: dict[tuple[int, int], dict[str, Any]] = {}
        for note in applied:
            cmd = {k: v for k, v in (note.get("command") or {}).items() if k != "pause"}
            if cmd:
                key = (int(note["epoch"]), int(note["step"]))
                self.pending[key] = {**self.pending.get(key, {}), **cmd}

    def poll(self) -> dict[str, Any] | None:
        return self.pending.pop(self.position, None)
