"""Great Expectations suite for image manifests (datasets/vision.py).

The runner validates `prepare(manifest)` against `expectations(manifest, cfg)`. `prepare`
adds the per-row columns that turn table-level rules into row checks, so failures name
files: `label_conflict` (same content filed under another label too), `class_count`,
`class_share` (the row's class as a fraction of all rows) and, here, `image_shape` ("HxW").

`cfg` (dict, every key optional): image_size (0 = images must share one size, as
PreprocessConfig), labels (the expected class names; default any), min_per_class (2),
min_share_of_fair / max_share_of_fair (0.25 / 4.0: a class may hold between a quarter and
four times its equal share), min_image_side (1), max_image_side (4096).
"""
from __future__ import annotations

import pandas as pd

from unified_pipeline.quality.common import class_folder_expectations, prepare_labels, setting

IMAGE_FORMATS = ["PNG", "JPEG", "BMP", "WEBP", "MPO"]  # MPO: JPEG from cameras with a preview frame


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    df = prepare_labels(manifest)
    known = df["height"].notna() & df["width"].notna()
    df["image_shape"] = None
    df.loc[known, "image_shape"] = [f"{int(h)}x{int(w)}" for h, w in zip(df.loc[known, "height"], df.loc[known, "width"])]
    return df


def expectations(manifest: pd.DataFrame, cfg: dict | None = None) -> list:
    import great_expectations.expectations as gxe

    low, high = int(setting(cfg, "min_image_side", 1)), int(setting(cfg, "max_image_side", 4096))
    suite = class_folder_expectations(manifest, cfg) + [
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=low, max_value=high, description="image width"),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=low, max_value=high, description="image height"),
        gxe.ExpectColumnValuesToBeBetween(column="channels", min_value=1, max_value=4, description="channels"),
        gxe.ExpectColumnValuesToBeInSet(column="format", value_set=IMAGE_FORMATS, description="readable format"),
    ]
    if int(setting(cfg, "image_size", 0) or 0) <= 0:
        shapes = prepare(manifest)["image_shape"].dropna()
        if len(shapes):
            common = shapes.value_counts().index[0]
            suite.append(gxe.ExpectColumnValuesToBeInSet(
                column="image_shape", value_set=[common],
                description=f"with image_size 0 all images share one size (most are {common}, HxW)",
            ))
    return suite
