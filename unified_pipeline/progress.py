"""Per-model progress files that `unified-pipeline monitor` and `status` read.

The training step writes `<home>/progress/<model>.json` atomically after every epoch (and at
start and end), so any number of readers can watch without talking to the trainer.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from unified_pipeline import atomic
from unified_pipeline.paths import unified_home


def progress_dir() -> Path:
    return unified_home() / "progress"


class ProgressWriter:
    def __init__(self, model: str, run_id: str, epochs: int, device: str):
        self.path = progress_dir() / f"{model}.json"
        self.state: dict[str, Any] = {
            "model": model, "run_id": run_id, "pid": os.getpid(), "epochs": int(epochs), "epoch": 0,
            "device": device, "status": "running", "started_at": time.time(), "updated_at": time.time(),
        }
        self._write()

    def on_epoch(self, record: dict[str, Any]) -> None:
        now = time.time()
        epoch = int(record.get("epoch", self.state["epoch"]))
        per_epoch = (now - self.state["started_at"]) / max(epoch, 1)
        self.state.update({k: v for k, v in record.items() if isinstance(v, (int, float, str))})
        self.state.update(epoch=epoch, updated_at=now, eta_s=max(0.0, (self.state["epochs"] - epoch) * per_epoch))
        self._write()

    def finish(self, status: str, **extra: Any) -> None:
        self.state.update(status=status, updated_at=time.time(), eta_s=0.0, **extra)
        self._write()

    def _write(self) -> None:
        try:
            atomic.write_json(self.path, self.state)
        except OSError:  # progress is best effort; training must not fail on it
            pass


def pid_alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0, ...) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_all() -> list[dict[str, Any]]:
    out = []
    for p in sorted(progress_dir().glob("*.json")):
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if state.get("status") == "running" and not pid_alive(int(state.get("pid", 0))):
            state["status"] = "died"
        out.append(state)
    return out
