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

import dataclasses
from typing import Any

import pandas as pd

from unified_pipeline.errors import ConfigError

IMAGE_FORMATS = ["PNG", "JPEG", "BMP", "WEBP", "MPO"]  # MPO: JPEG from cameras with a preview frame
SHA256_REGEX = r"^[0-9a-f]{64}$"
SPLIT_NAMES = ["train", "val", "test"]


def setting(cfg: Any, key: str, default: Any) -> Any:
    """Read `key` from a dict or a PreprocessConfig (also looking in its `extra`)."""
    if cfg is None:
        return default
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    extra = cfg.get("extra") or {}
    return extra.get(key, default)


def prepare_labels(manifest: pd.DataFrame) -> pd.DataFrame:
    df = manifest.copy().reset_index(drop=True)
    labels = df["label"].astype("string")
    labels_per_hash = labels.groupby(df["sha256"]).transform("nunique")
    df["label_conflict"] = (labels_per_hash > 1).astype(bool)
    counts = labels.map(labels.value_counts())
    df["class_count"] = counts.fillna(0).astype("int64")
    df["class_share"] = (df["class_count"] / max(len(df), 1)).astype("float64")
    return df


def label_set_expectations(cfg: Any) -> list:
    """With `labels` set: every row's label is one of them (offending rows named) and each occurs."""
    import great_expectations.expectations as gxe

    labels = setting(cfg, "labels", None)
    if labels is None or (isinstance(labels, (list, tuple)) and not labels):
        return []
    if not isinstance(labels, (list, tuple)) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                        for v in labels):
        raise ConfigError(f"labels: expected a list of class names, got {labels!r}")
    expected = sorted({str(v) for v in labels})
    return [
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=expected,
                                        description=f"only the configured labels {expected}"),
        gxe.ExpectColumnDistinctValuesToContainSet(column="label", value_set=expected,
                                                   description="every configured label occurs"),
    ]


def label_expectations(manifest: pd.DataFrame, cfg: Any) -> list:
    """Rules shared by every class-folder kind: identity, decodability, labels, balance."""
    import great_expectations.expectations as gxe

    n_classes = max(int(manifest["label"].nunique()), 1)
    fair = 1.0 / n_classes
    low = setting(cfg, "min_share_of_fair", 0.25) * fair
    high = min(1.0, setting(cfg, "max_share_of_fair", 4.0) * fair)
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the dataset has samples"),
        gxe.ExpectColumnValuesToNotBeNull(column="path", description="every row names its file"),
        gxe.ExpectColumnValuesToBeUnique(column="path", description="each file appears once"),
        gxe.ExpectColumnValuesToNotBeNull(column="label", description="every file has a class"),
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256_REGEX, description="content hash present"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=SPLIT_NAMES, description="known split"),
        gxe.ExpectColumnValuesToBeInSet(
            column="decodable", value_set=[True], description="every file decodes (see the error column)"
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="label_conflict", value_set=[False],
            description="identical files never carry different labels",
        ),
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column="label", min_value=2, description="at least two classes to tell apart"
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="class_count", min_value=int(setting(cfg, "min_per_class", 2)),
            description="every class has enough samples",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="class_share", min_value=round(low, 6), max_value=round(high, 6),
            description=f"class balance: each class holds {low:.3f}..{high:.3f} of the rows",
        ),
    ] + label_set_expectations(cfg)


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    df = prepare_labels(manifest)
    known = df["height"].notna() & df["width"].notna()
    df["image_shape"] = None
    df.loc[known, "image_shape"] = [f"{int(h)}x{int(w)}" for h, w in zip(df.loc[known, "height"], df.loc[known, "width"])]
    return df


def expectations(manifest: pd.DataFrame, cfg: dict | None = None) -> list:
    import great_expectations.expectations as gxe

    low, high = int(setting(cfg, "min_image_side", 1)), int(setting(cfg, "max_image_side", 4096))
    suite = label_expectations(manifest, cfg) + [
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
