"""Per-file decoding for the class-folder kinds, run in worker processes (or in-process).

Each task is a list of files; a worker keeps what costs to set up (torchaudio's MelSpectrogram
and one Resample per source rate) for its whole life. Decoding runs torch on one thread per
process: the per-clip operations are tiny, and several intra-op threads on a busy machine spend
far longer waiting for each other than computing (measured: 21 ms against 0.06 ms to resample
one 1 s clip from 8 to 16 kHz on two shared cores). Workers import nothing heavy until needed,
so starting them costs little.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import types
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

LOG_OFFSET = 1e-6
TASK_FILES = 128  # files per task: amortises the inter-process hop and the pack file, keeps results small
# Fewer files than this decode in-process: a spawned worker costs 0.3 s (images) to 2 s (audio:
# torch) before its first file, and on two cores 1,797 images or 1,600 clips finished sooner in
# one process than in a pool.
POOL_FROM = 4096
IN_FLIGHT_PER_WORKER = 3
_WORKER: dict = {}


def worker_count(requested: int | None = None) -> int:
    if requested:
        return max(1, int(requested))
    env = os.environ.get("UNIFIED_DECODE_WORKERS")
    return max(1, int(env)) if env else max(1, len(os.sched_getaffinity(0)))


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # one process per core already
    _WORKER["pool"] = True


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the block (in-process decoding), restored afterwards."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch and before:
            torch.set_num_threads(before)


# The decoder a file's suffix names is tried first: PIL's open otherwise probes format after format.
FORMAT_OF_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}


def open_image(path: Path, data: bytes | None = None):
    """PIL's Image.open, with the format the suffix names tried first (a misnamed file still opens);
    from `data` (the file's bytes) when given."""
    from PIL import Image, UnidentifiedImageError

    source = path if data is None else io.BytesIO(data)
    fmt = FORMAT_OF_SUFFIX.get(os.path.splitext(str(path))[1].lower())
    if fmt:
        try:
            return Image.open(source, formats=[fmt])
        except UnidentifiedImageError:
            if data is not None:
                source.seek(0)
    return Image.open(source)


def load_image(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """Decode to uint8 [C,H,W] in `mode` ("L" or "RGB"), resized to size=(H,W) when given."""
    with open_image(path) as im:
        return image_pixels(im, mode, size)


def image_pixels(im, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """An opened PIL image as uint8 [C,H,W] in `mode`, resized to size=(H,W) when given."""
    from PIL import Image

    if im.mode != mode:
        im = im.convert(mode)
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def decode_images(root: str, rels: list[str], mode: str, size: tuple[int, int] | None) -> list[tuple[np.ndarray, int]]:
    return [(load_image(Path(root) / rel, mode, size), 0) for rel in rels]


def decode_clips(root: str, rels: list[str], sample_rate: int, max_samples: int,
                 mel: dict) -> list[tuple[np.ndarray, int]]:
    """log-mel float16 [n_mels, T] per clip with NaN in the padded frames, and its valid frames."""
    import torch
    import torchaudio

    from unified_pipeline.datasets.audio import load_clip, stored_log_mel, valid_frames

    if _WORKER.get("pool") and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    key = tuple(sorted(mel.items()))
    if _WORKER.get("mel_key") != key:
        _WORKER["mel"] = torchaudio.transforms.MelSpectrogram(**mel)
        _WORKER["mel_key"] = key
    resamplers = _WORKER.setdefault(("resample", sample_rate), {})
    waves = [load_clip(Path(root) / rel, sample_rate, max_samples, resamplers) for rel in rels]
    lengths = [valid_frames(int(wave.shape[0]), mel["hop_length"]) for wave in waves]
    feats = stored_log_mel(waves, max_samples, mel, _WORKER["mel"])
    out = []
    for f, n in zip(feats, lengths):
        n = min(n, f.shape[-1])
        f[:, n:] = float("nan")
        out.append((f.numpy(), n))
    return out


def _run(args: tuple) -> list[tuple[np.ndarray, int]]:
    fn, root, rels, extra = args
    return fn(root, rels, *extra)


def _new_pool(n: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    # spawn: the step process may hold threads (Dagster, torch), which fork does not copy safely
    pool = ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_init_worker)
    with _workers_skip_main_script():  # the pool starts one worker per submit until it has n
        for _ in range(n):
            pool.submit(_warm_up)
    return pool


def _warm_up() -> None:
    """A new worker's first task: the imports every reader needs, while the caller does other work."""
    import PIL.Image  # noqa: F401

    from unified_pipeline.datasets import facts_readers  # noqa: F401


_EARLY: dict[int, ProcessPoolExecutor] = {}  # worker count -> a pool started before its first task


@contextlib.contextmanager
def workers_started_early(wanted: bool = True) -> Iterator[None]:
    """Starts the decode workers now (when `wanted` and more than one), so they start up while
    the block does other work (e.g. listing the files); the block's decode_all with as many
    workers takes them. A spawned worker takes 0.3 s before its first file. Shut down when the
    block ends, whoever took them."""
    n = worker_count()
    if not wanted or n == 1 or n in _EARLY:
        yield
        return
    pool = _EARLY[n] = _new_pool(n)
    try:
        yield
    finally:
        _EARLY.pop(n, None)
        pool.shutdown(cancel_futures=True)


def decode_all(fn: Callable, root: Path, rels: list[str], extra: tuple, workers: int | None = None,
               pool_from: int = POOL_FROM) -> Iterator:
    """fn(root, files, *extra) over all files, in order, on every core when there are enough files."""
    tasks = [(fn, str(root), rels[i:i + TASK_FILES], extra) for i in range(0, len(rels), TASK_FILES)]
    n = worker_count(workers)
    if n == 1 or len(rels) < pool_from:
        for task in tasks:
            with one_thread():
                part = _run(task)
            yield from part
        return
    early = _EARLY.pop(n, None)
    with early or _new_pool(n) as pool:
        pending: deque = deque()
        todo = iter(tasks)
        for task in todo:  # a bounded window of tasks in flight: results never pile up in memory
            pending.append(pool.submit(_run, task))
            if len(pending) >= IN_FLIGHT_PER_WORKER * n:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


@contextlib.contextmanager
def _workers_skip_main_script() -> Iterator[None]:
    """Workers started in the block do not run the parent's main script again.

    spawn re-runs a `__main__` loaded from a file in every worker, so functions defined there
    unpickle; the tasks here are functions of this package, so that is pure cost. Under the
    `dagster` console script (`dagster job execute`, `dagster asset materialize`) it imported
    Dagster's CLI in every worker: 1.9 s each, twice per image lane, on two cores. A main run as
    a module (`python -m ...`) is imported by name, cheaply, and left as it is.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(getattr(main, "__spec__", None), "name", None) or not getattr(main, "__file__", None):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__: spawn leaves the worker's main alone
    try:
        yield
    finally:
        sys.modules["__main__"] = main
