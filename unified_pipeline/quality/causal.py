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
from unified_pipeline.quality.common import max_abs_expectation, setting, table_expectations, with_max_abs

REQUIRED = ["sample_id", "path", "row", "sha256", "split", "decodable", "error", "has_ground_truth"]


def prepare(manifest: pd.DataFrame) -> pd.DataFrame:
    # `error` names the cell behind a row's magnitude.
    return with_max_abs(manifest, [c for c in manifest.columns if c.startswith(PREFIX)])


def expectations(manifest: pd.DataFrame, cfg: Any = None) -> list:
    import great_expectations.expectations as gxe

    variables = [c for c in manifest.columns if c.startswith(PREFIX)]
    suite = table_expectations(cfg, REQUIRED, 50, "enough observations")
    if bool(setting(cfg, "require_ground_truth", False)):
        suite.append(gxe.ExpectColumnValuesToBeInSet(column="has_ground_truth", value_set=[True],
                                                     description="an adjacency.csv ground truth is present"))
    suite.append(max_abs_expectation(cfg, "largest magnitude in the row"))
    for col in variables:
        suite.append(gxe.ExpectColumnStdevToBeBetween(column=col, min_value=float(setting(cfg, "min_std", 1e-8)),
                                                      description=f"{col} varies"))
    return suite
