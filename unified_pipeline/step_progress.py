"""Progress of long non-training steps: a tqdm bar in a terminal and steady lines in a log.

The bar is for a person watching a terminal; the log lines are for the Dagster run log (or
Python logging), where a bar would be noise. A step that ends within `quiet_for_s` logs
nothing, so re-hashing a cached dataset on every sensor tick stays silent.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

BAR_ENV = "UNIFIED_PROGRESS_BAR"  # "0" hides the bars everywhere (subprocesses inherit it); log lines stay
DEFAULT_LOGGER = "unified_pipeline.progress"

T = TypeVar("T")
_clock = time.monotonic


def bars_enabled(stream: Any = None) -> bool:
    """Bars only on an interactive terminal, and never when UNIFIED_PROGRESS_BAR is off."""
    if os.environ.get(BAR_ENV, "").strip().lower() in {"0", "false", "no", "off"}:
        return False
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def log_function(log: Any) -> Callable[[str], None]:
    """Dagster's context.log and logging.Logger have .info; print or any callable is called."""
    if log is None:
        return logging.getLogger(DEFAULT_LOGGER).info
    if log is print:
        return tqdm.write  # same stdout as print, but clears and redraws an active bar
    info = getattr(log, "info", None)
    return info if callable(info) else log


def _duration(seconds: float) -> str:
    return tqdm.format_interval(max(0.0, seconds))


class StepProgress:
    """Count work done; draw a bar and log `done/total, rate, ETA` every `every_fraction` or `every_s`."""

    def __init__(self, total: int | None, desc: str, log: Any = None, unit: str = "item", *,
                 every_fraction: float = 0.1, every_s: float = 30.0, quiet_for_s: float = 2.0,
                 bar: bool | None = None):
        self.total = int(total) if total is not None else None
        self.desc, self.unit = desc, unit
        self.every_fraction, self.every_s, self.quiet_for_s = every_fraction, every_s, quiet_for_s
        self.done = 0
        self.logged_lines = 0
        self._emit = log_function(log)
        self._start = self._last_log = _clock()
        self._next_fraction = every_fraction
        self._closed = False
        show = bars_enabled() if bar is None else bar
        self._bar = tqdm(total=self.total, desc=desc, unit=unit, disable=not show, file=sys.stderr,
                         leave=False, dynamic_ncols=True)

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)
        now = _clock()
        if now - self._start < self.quiet_for_s:
            return
        fraction = self.done / self.total if self.total else None
        due_fraction = fraction is not None and fraction < 1.0 and fraction >= self._next_fraction
        if due_fraction or now - self._last_log >= self.every_s:
            self._log(self.status_line(now))
            self._last_log = now
            if fraction is not None:
                # Skip thresholds already passed (e.g. during the quiet start): one line per crossing.
                self._next_fraction = (math.floor(fraction / self.every_fraction + 1e-9) + 1) * self.every_fraction

    def note(self, message: str) -> None:
        """A line of the caller's own, written without tearing the bar."""
        self._log(message)

    def status_line(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else _clock()) - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: {self.done}"
        if self.total:
            head += f"/{self.total} {self.unit}s ({100.0 * self.done / self.total:.0f}%)"
        else:
            head += f" {self.unit}s"
        eta = "?" if not (self.total and rate) else _duration((self.total - self.done) / rate)
        tail = f", ETA {eta}" if self.total else ""
        return f"{head}, {rate:.3g} {self.unit}/s, elapsed {_duration(elapsed)}{tail}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        elapsed = _clock() - self._start
        if self.logged_lines or elapsed >= self.quiet_for_s:
            finished = self.total is None or self.done >= self.total
            verb = "finished" if finished else "stopped at"
            count = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
            rate = self.done / elapsed if elapsed > 0 else 0.0
            self._log(f"{self.desc}: {verb} {count} {self.unit}s in {_duration(elapsed)} ({rate:.3g} {self.unit}/s)")

    def _log(self, message: str) -> None:
        self.logged_lines += 1
        self._emit(message)


def track(items: Iterable[T], desc: str, *, total: int | None = None, log: Any = None, unit: str = "item",
          **options: Any) -> Iterator[T]:
    """Yield from `items` while reporting progress (see StepProgress for `options`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with StepProgress(total, desc, log=log, unit=unit, **options) as progress:
        for item in items:
            yield item
            progress.update()
