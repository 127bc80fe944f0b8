"""The handwritten digits that scikit-learn ships (UCI optical digits: 1,797 8x8 images,
grey levels 0..16), written as 8-bit grayscale PNGs in class folders "0".."9"."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from unified_pipeline.atomic import atomic_dir


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N,8,8] scaled to 0..255 and their int labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, digits.target.astype(int)


def generate_digit_images(dest: Path, seed: int = 0) -> Path:
    """Write the digits under `dest` (kept as is when it already exists).

    The images are real scans, so there is nothing to draw at random: `seed` is accepted for
    the common generator signature and does not change the files.
    """
    from PIL import Image

    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    images, labels = digit_images()
    with atomic_dir(dest) as tmp:
        for i, (img, label) in enumerate(zip(images, labels)):
            folder = tmp / str(label)
            folder.mkdir(exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:04d}.png", format="PNG")
    return dest
