"""The shared Great Expectations runner: passing and failing suites, offenders named by file and row."""
from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest

from unified_pipeline.errors import ConfigError
from unified_pipeline.quality import runner


@pytest.fixture
def toy_suite(monkeypatch):
    import great_expectations.expectations as gxe

    module = types.ModuleType("unified_pipeline.quality.toy")
    module.prepare = lambda df: df.assign(empty=df["length"] == 0)
    module.expectations = lambda df, cfg: [
        gxe.ExpectTableColumnsToMatchSet(column_set=["path", "row", "label", "length"], exact_match=False),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeInSet(column="empty", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="length", min_value=0, max_value=cfg.get("max_len", 100)),
    ]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return "toy"


def test_passing_suite(toy_suite):
    df = pd.DataFrame({"path": ["a.csv", "a.csv"], "row": [1, 2], "label": ["x", "y"], "length": [3, 4]})
    report = runner.validate(toy_suite, df)
    assert report.success
    assert len(report.results) == 4 and all(r["success"] for r in report.results)
    assert "4/4 expectations passed on 2 rows" in report.summary()
    assert "empty" not in df.columns  # prepare works on a copy


def test_failing_suite_names_offenders(toy_suite):
    df = pd.DataFrame(
        {"path": ["a.csv", "a.csv", "b.csv"], "row": [1, 2, 7], "label": ["x", None, "y"], "length": [3, 0, 500]}
    )
    report = runner.validate(toy_suite, df, {"max_len": 10})
    assert not report.success
    failed = {r["expectation"]: r for r in report.failures}
    assert set(failed) == {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
    }
    assert failed["expect_column_values_to_not_be_null"]["offenders"] == [{"path": "a.csv", "row": 2}]
    assert failed["expect_column_values_to_be_between"]["offenders"] == [{"path": "b.csv", "row": 7}]
    assert failed["expect_column_values_to_be_between"]["unexpected_count"] == 1
    text = report.summary()
    assert "a.csv:2" in text and "b.csv:7" in text and "expect_column_values_to_be_between" in text
    meta = report.to_metadata()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["success"] is False


def test_missing_column_is_a_failure_with_message(toy_suite):
    df = pd.DataFrame({"path": ["a.csv"], "row": [1], "label": ["x"], "length": [1]}).drop(columns=["label"])
    report = runner.validate(toy_suite, df)
    assert not report.success
    failed = {r["expectation"]: r for r in report.failures}
    assert "label" in str(failed["expect_table_columns_to_match_set"]["details"])
    assert "label" in (failed["expect_column_values_to_not_be_null"]["exception"] or "")


def test_unknown_kind():
    with pytest.raises(ConfigError, match="no_such_kind"):
        runner.validate("no_such_kind", pd.DataFrame())
