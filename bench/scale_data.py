"""Scaled-up image and audio lanes for the `scale` benchmark, made from the sample generators.

Images: the 1,797 digit scans, each copy enlarged to 32x32 RGB (or another size) with a random rotation, shift,
foreground/background colour and pixel noise. Audio: the spoken digits, each copy at 8 kHz,
one second, with a random gain, time shift, speed change and noise. `factor` copies of the
sample set; copy 0 of an image is the plain enlarged scan. Written on every core.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32
AUDIO_RATE = 8000


def _image_task(args: tuple) -> int:
    dest, start, stop, size = args
    from PIL import Image, ImageOps

    from unified_pipeline.datasets.samples.digit_images import digit_images

    images, labels = digit_images()
    n = len(images)
    for k in range(start, stop):
        rng = np.random.default_rng(k)
        img, label = images[k % n], labels[k % n]
        im = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
        if k >= n:
            im = im.rotate(float(rng.uniform(-15, 15)), translate=tuple(int(v) for v in rng.integers(-3, 4, 2)))
        fg, bg = rng.integers(128, 256, 3), rng.integers(0, 96, 3)
        rgb = np.asarray(ImageOps.colorize(im, black=tuple(int(v) for v in bg), white=tuple(int(v) for v in fg)),
                         dtype=np.int16)
        rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
        folder = Path(dest) / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{k:06d}.png")
    return stop - start


def _clip_task(args: tuple) -> int:
    dest, source, start, stop = args
    import soundfile as sf
    from scipy.signal import resample_poly

    files = sorted(Path(source).rglob("*.wav"))
    for k in range(start, stop):
        rng = np.random.default_rng(k)
        path = files[k % len(files)]
        wave, rate = sf.read(path, dtype="float32")
        speed = 1.0 if k < len(files) else float(rng.uniform(0.9, 1.1))
        wave = resample_poly(wave, AUDIO_RATE, int(round(rate * speed))).astype(np.float32)
        out = np.zeros(AUDIO_RATE, dtype=np.float32)
        shift = int(rng.integers(0, max(1, AUDIO_RATE - len(wave)))) if len(wave) < AUDIO_RATE else 0
        piece = wave[: AUDIO_RATE - shift]
        out[shift:shift + len(piece)] = piece * float(rng.uniform(0.5, 1.2))
        out += rng.normal(0, 0.003, AUDIO_RATE).astype(np.float32)
        folder = Path(dest) / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{k:06d}.wav", np.clip(out, -1, 1), AUDIO_RATE, subtype="PCM_16")
    return stop - start


def _parallel(task, jobs: list[tuple]) -> int:
    with ProcessPoolExecutor(max(1, len(os.sched_getaffinity(0)))) as pool:
        return sum(pool.map(task, jobs))


def image_lane(dest: Path, factor: int, size: int = IMAGE_SIZE, count: int | None = None) -> int:
    """factor x 1,797 images (or `count` of them) of size x size under dest/<digit>/; returns how many."""
    from unified_pipeline.datasets.samples.digit_images import digit_images

    total = count if count is not None else len(digit_images()[0]) * factor
    step = 2000 if total > 4000 else 500  # small lanes still spread over every core
    return _parallel(_image_task, [(str(dest), i, min(i + step, total), size) for i in range(0, total, step)])


def audio_lane(dest: Path, factor: int, scratch: Path) -> int:
    """factor x the spoken-digit sample clips, 1 s at 8 kHz, under dest/<word>/; returns how many."""
    from unified_pipeline.datasets.samples.spoken_digits import generate_spoken_digits

    source = generate_spoken_digits(Path(scratch) / "spoken_digits_source", 0)
    total = len(list(source.rglob("*.wav"))) * factor
    step = 1000
    return _parallel(_clip_task, [(str(dest), str(source), i, min(i + step, total)) for i in range(0, total, step)])
