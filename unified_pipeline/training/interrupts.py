"""SIGINT/SIGTERM during a fit: noted, then acted on at the next step boundary.

The trainer checks `FitState.signal` after every step, writes a checkpoint and raises
`TrainingInterrupted`; a second signal gives up waiting (or saving) at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Iterator

from unified_pipeline.training.fit_state import FitState


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived during fit; a checkpoint was written first (if a folder was set)."""

    def __init__(self, signum: int, checkpoint: Path | None):
        super().__init__(f"training interrupted by signal {signum}; checkpoint: {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint


@contextlib.contextmanager
def signals_deferred(state: FitState) -> Iterator[None]:
    """Record SIGINT/SIGTERM in `state.signal` instead of raising; handlers come back after.
    Only the main thread can install handlers: elsewhere signals keep their usual effect."""
    state.signal = None

    def on_signal(signum, _frame):
        if state.signal is not None:  # second signal: give up waiting (or saving); older checkpoints stay valid
            raise TrainingInterrupted(signum, None)
        state.signal = signum

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
