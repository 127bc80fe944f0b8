"""Rules and columns that several Great Expectations suites share.

`cfg` is a dict or a PreprocessConfig; `setting` reads one key of either. The class rules serve
every labelled kind (class folders and text tables), the table rules every kind whose manifest
has one row per row of a source table (transitions, causal, memory).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from unified_pipeline.errors import ConfigError

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
    """Per-row columns for the class rules: `label_conflict`, `class_count`, `class_share`."""
    df = manifest.copy().reset_index(drop=True)
    labels = df["label"].astype("string")
    labels_per_hash = labels.groupby(df["sha256"]).transform("nunique")
    df["label_conflict"] = (labels_per_hash > 1).astype(bool)
    counts = labels.map(labels.value_counts())
    df["class_count"] = counts.fillna(0).astype("int64")
    df["class_share"] = (df["class_count"] / max(len(df), 1)).astype("float64")
    return df


def with_max_abs(manifest: pd.DataFrame, cells: list[str]) -> pd.DataFrame:
    """One row-level magnitude column instead of one expectation per column (GX costs ~30 ms each)."""
    df = manifest.copy().reset_index(drop=True)
    df["max_abs_value"] = df[cells].abs().max(axis=1, skipna=True) if cells else 0.0
    return df


def identity_expectations() -> list:
    """Every row has a content hash and a known split."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256_REGEX, description="content hash present"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=SPLIT_NAMES, description="known split"),
    ]


def table_expectations(cfg: Any, required: list[str], min_rows: int, rows: str, unique: str = "sample_id",
                       unique_what: str = "each row appears once",
                       decodable: str = "every cell numeric and finite (see the error column)") -> list:
    """Enough rows, the manifest schema, every row parsed, unique ids, hash and split."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=int(setting(cfg, "min_rows", min_rows)), description=rows),
        gxe.ExpectTableColumnsToMatchSet(column_set=required, exact_match=False, description="manifest schema"),
        gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True], description=decodable),
        gxe.ExpectColumnValuesToBeUnique(column=unique, description=unique_what),
    ] + identity_expectations()


def max_abs_expectation(cfg: Any, what: str) -> Any:
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeBetween(column="max_abs_value", min_value=0,
                                             max_value=float(setting(cfg, "max_abs_value", 1e6)), description=what)


def class_expectations(manifest: pd.DataFrame, cfg: Any, samples: str) -> list:
    """At least two classes, each with enough `samples` and a fair share of the rows, plus `labels`."""
    import great_expectations.expectations as gxe

    n_classes = max(int(manifest["label"].nunique()), 1) if "label" in manifest else 1
    fair = 1.0 / n_classes
    low = setting(cfg, "min_share_of_fair", 0.25) * fair
    high = min(1.0, setting(cfg, "max_share_of_fair", 4.0) * fair)
    return [
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=2,
                                                    description="at least two classes to tell apart"),
        gxe.ExpectColumnValuesToBeBetween(column="class_count", min_value=int(setting(cfg, "min_per_class", 2)),
                                          description=f"every class has enough {samples}"),
        gxe.ExpectColumnValuesToBeBetween(
            column="class_share", min_value=round(low, 6), max_value=round(high, 6),
            description=f"class balance: each class holds {low:.3f}..{high:.3f} of the rows"),
    ] + label_set_expectations(cfg)


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


def class_folder_expectations(manifest: pd.DataFrame, cfg: Any) -> list:
    """Rules shared by every class-folder kind: identity, decodability, labels, balance."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the dataset has samples"),
        gxe.ExpectColumnValuesToNotBeNull(column="path", description="every row names its file"),
        gxe.ExpectColumnValuesToBeUnique(column="path", description="each file appears once"),
        gxe.ExpectColumnValuesToNotBeNull(column="label", description="every file has a class"),
        *identity_expectations(),
        gxe.ExpectColumnValuesToBeInSet(
            column="decodable", value_set=[True], description="every file decodes (see the error column)"
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="label_conflict", value_set=[False],
            description="identical files never carry different labels",
        ),
    ] + class_expectations(manifest, cfg, "samples")


def reward_expectation(cfg: Any) -> Any:
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeBetween(column="reward", min_value=float(setting(cfg, "reward_min", -1e6)),
                                             max_value=float(setting(cfg, "reward_max", 1e6)), description="reward range")
