"""Great Expectations suite for text manifests (datasets/text.py).

Row checks name `path:row`: empty or over-long texts, missing labels, unparsable records,
the same text filed under two labels (`label_conflict`), and classes that are too small or
out of balance (`class_count`, `class_share` per row, from `prepare_labels`).

`cfg` (dict or PreprocessConfig, every key optional): min_text_len (1), max_text_chars
(10000), labels (the expected label set; default any), min_per_class (2), min_share_of_fair /
max_share_of_fair (0.25 / 4.0 of an equal class share).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from unified_pipeline.quality.common import class_expectations, identity_expectations, prepare_labels, setting

REQUIRED = ["sample_id", "path", "row", "label", "text", "length", "sha256", "split", "decodable", "error"]


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    return prepare_labels(manifest)


def expectations(manifest: pd.DataFrame, cfg: Any = None) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the dataset has texts"),
        gxe.ExpectTableColumnsToMatchSet(column_set=REQUIRED, exact_match=False, description="manifest schema"),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id", description="each record appears once"),
        gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True],
                                        description="every record parses (see the error column)"),
        gxe.ExpectColumnValuesToNotBeNull(column="label", description="every text has a label"),
        gxe.ExpectColumnValuesToBeBetween(
            column="length", min_value=int(setting(cfg, "min_text_len", 1)),
            max_value=int(setting(cfg, "max_text_chars", 10000)), description="text length in characters"),
        *identity_expectations(),
        gxe.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False],
                                        description="identical texts never carry different labels"),
    ] + class_expectations(manifest, cfg, "texts")
