"""Image classification data in the torchvision ImageFolder layout: <dataset>/<class>/<image>.

The manifest decodes every image once (PIL) so the quality suite can name broken files and
odd sizes; `build_tensors` turns decodable images into normalised float tensors [N,C,H,W].
The folder layout itself is checked in `class_folders`, shared with the audio kind.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from unified_pipeline.datasets.base import PreprocessConfig, TensorBundle
from unified_pipeline.datasets.splits import SPLITS, assign_splits
from unified_pipeline.datasets.class_folders import (
    base_row, data_version, detect_class_folders, refuse_undecodable, sample_path, scan_class_folders,
)
from unified_pipeline.errors import DatasetError
from unified_pipeline.step_progress import track

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GRAY_MODES = ("1", "L")
MANIFEST_COLUMNS = [
    "sample_id", "path", "label", "sha256", "size", "split", "decodable", "error",
    "width", "height", "channels", "mode", "format",
]


def read_image_facts(path: Path) -> dict:
    """Fully decode one image (so truncated files fail here, not during training)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return {
                "width": im.width, "height": im.height, "channels": len(im.getbands()),
                "mode": im.mode, "format": im.format,
            }
    except Exception as exc:  # PIL raises many types for broken files; all mean "not decodable"
        return {"decodable": False, "error": f"{type(exc).__name__}: {exc}"}


def load_image(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """Decode to uint8 [C,H,W] in `mode` ("L" or "RGB"), resized to size=(H,W) when given."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(mode)
        if size is not None and (im.height, im.width) != size:
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class VisionKind:
    name = "vision"
    description = "images in class sub-folders (png/jpg/jpeg/bmp/webp), ImageFolder layout"

    def detect(self, root: Path) -> bool:
        return detect_class_folders(root, IMAGE_EXTENSIONS)

    def build_manifest(self, root: Path, file_hashes: dict[str, str],
                       cfg: PreprocessConfig | None = None) -> pd.DataFrame:
        root = Path(root)
        rows = []
        rels = scan_class_folders(root, file_hashes, IMAGE_EXTENSIONS, "image")
        for rel in track(rels, f"reading {root.name}", log=(cfg or PreprocessConfig()).log, unit="image"):
            row = base_row(root, rel, file_hashes[rel])
            row.update({"width": None, "height": None, "channels": None, "mode": None, "format": None})
            row.update(read_image_facts(root / rel))
            rows.append(row)
        df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        for col in ("width", "height", "channels"):
            df[col] = df[col].astype("Int64")
        df["decodable"] = df["decodable"].astype(bool)
        df["split"] = assign_splits(df, cfg or PreprocessConfig())
        return df

    def build_tensors(self, root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig) -> TensorBundle:
        import torch

        root = Path(root)
        if manifest.empty:
            raise DatasetError(f"{root}: manifest has no samples")
        refuse_undecodable(manifest, root)
        mode = "L" if all(m in GRAY_MODES for m in manifest["mode"]) else "RGB"
        size = self._target_size(root, manifest, cfg)
        classes = sorted(manifest["label"].unique())
        index = {c: i for i, c in enumerate(classes)}
        paths = track(manifest["path"], f"decoding {root.name}", total=len(manifest), log=cfg.log, unit="image")
        images = np.stack([load_image(sample_path(root, rel), mode, size) for rel in paths])
        x = torch.from_numpy(images).float().div_(255.0)
        y = torch.tensor([index[c] for c in manifest["label"]], dtype=torch.int64)
        splits = assign_splits(manifest, cfg)
        train = torch.from_numpy(splits == "train")
        stats_from = x[train] if bool(train.any()) else x  # tiny datasets may have no train sample
        mean = stats_from.mean(dim=(0, 2, 3))
        std = stats_from.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6)
        x = (x - mean[None, :, None, None]) / std[None, :, None, None]
        tensors, counts, sample_ids = {}, {}, {}
        for split in SPLITS:
            sel = np.flatnonzero(splits == split)
            idx = torch.from_numpy(sel)
            tensors[f"{split}/x"] = x[idx].contiguous()
            tensors[f"{split}/y"] = y[idx].contiguous()
            counts[split] = int(len(sel))
            sample_ids[split] = [manifest["sample_id"].iloc[i] for i in sel]
        meta = {
            "dataset": root.name, "kind": self.name, "data_version": data_version(manifest),
            "splits": counts, "classes": classes, "channels": int(x.shape[1]),
            "image_size": [int(x.shape[2]), int(x.shape[3])], "mode": mode,
            "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "scale": "pixel/255 then (v - mean) / std per channel",
        }
        return TensorBundle(tensors=tensors, meta=meta, sidecars={"samples": sample_ids})

    @staticmethod
    def _target_size(root: Path, manifest: pd.DataFrame, cfg: PreprocessConfig) -> tuple[int, int] | None:
        if cfg.image_size and cfg.image_size > 0:
            return (int(cfg.image_size), int(cfg.image_size))
        sizes = Counter(zip(manifest["height"].astype(int), manifest["width"].astype(int)))
        if len(sizes) > 1:
            common = sizes.most_common(1)[0][0]
            odd = manifest[[(h, w) != common for h, w in zip(manifest["height"], manifest["width"])]].iloc[0]
            raise DatasetError(
                f"{root / odd['path']}: image is {odd['height']}x{odd['width']} (HxW) but most images are "
                f"{common[0]}x{common[1]}; sizes found: "
                + ", ".join(f"{h}x{w} ({n} files)" for (h, w), n in sizes.most_common()),
                hint="set image_size in the preprocess config to resize all images",
            )
        return None

    def generate_samples(self, raw_root: Path, seed: int = 0) -> list[Path]:
        from unified_pipeline.datasets.samples.digit_images import generate_digit_images

        return [generate_digit_images(Path(raw_root) / "digits", seed)]


KIND = VisionKind()
