"""Great Expectations suite for causal-discovery manifests (datasets/causal.py).

Row checks name `path:row`: cells that are empty, non-numeric or non-finite (`decodable`,
with the column in `error`) and values beyond `max_abs_value`. Column checks:
every variable varies (a constant column carries no causal signal and breaks
standardisation). The ground truth itself (shape, names, 0/1, acyclic) is refused while
the manifest is built, since a wrong graph leaves nothing to check row by row.

`cfg` (dict or PreprocessConfig, every key optional): min_rows (50), max_abs_value (1e6),
min_std (1e-8), require_ground_truth (False).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from unified_pipeline.datasets.causal import PREFIX
from unified_pipeline.quality.vision import SHA256_REGEX, SPLIT_NAMES, setting

REQUIRED = ["sample_id", "path", "row", "sha256", "split", "decodable", "error", "has_ground_truth"]


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    df = manifest.copy().reset_index(drop=True)
    variables = [c for c in df.columns if c.startswith(PREFIX)]
    # One row-level magnitude column keeps the suite small for wide data; `error` names the cell.
    df["max_abs_value"] = df[variables].abs().max(axis=1, skipna=True) if variables else 0.0
    return df


def expectations(manifest: pd.DataFrame, cfg: Any = None) -> list:
    import great_expectations.expectations as gxe

    bound = float(setting(cfg, "max_abs_value", 1e6))
    variables = [c for c in manifest.columns if c.startswith(PREFIX)]
    suite = [
        gxe.ExpectTableRowCountToBeBetween(min_value=int(setting(cfg, "min_rows", 50)),
                                           description="enough observations"),
        gxe.ExpectTableColumnsToMatchSet(column_set=REQUIRED, exact_match=False, description="manifest schema"),
        gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True],
                                        description="every cell numeric and finite (see the error column)"),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id", description="each row appears once"),
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=SHA256_REGEX, description="content hash present"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=SPLIT_NAMES, description="known split"),
    ]
    if bool(setting(cfg, "require_ground_truth", False)):
        suite.append(gxe.ExpectColumnValuesToBeInSet(column="has_ground_truth", value_set=[True],
                                                     description="an adjacency.csv ground truth is present"))
    suite.append(gxe.ExpectColumnValuesToBeBetween(column="max_abs_value", min_value=0, max_value=bound,
                                                   description="largest magnitude in the row"))
    for col in variables:
        suite.append(gxe.ExpectColumnStdevToBeBetween(column=col, min_value=float(setting(cfg, "min_std", 1e-8)),
                                                      description=f"{col} varies"))
    return suite
