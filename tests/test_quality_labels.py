"""The optional `labels` setting (the expected label set) in the vision, audio and text suites."""
from __future__ import annotations

import pytest

from unified_pipeline.errors import ConfigError
from unified_pipeline.quality.runner import validate
from test_audio_data import make_clips, manifest_of as audio_manifest  # tests/ is on sys.path
from test_text_data import good_rows, manifest as text_manifest, write_csv
from test_vision_data import make_images, manifest_of as image_manifest

IN_SET = "expect_column_values_to_be_in_set"
CONTAINS = "expect_column_distinct_values_to_contain_set"


def label_failures(report) -> dict[str, dict]:
    return {r["expectation"]: r for r in report.failures if r["column"] == "label"}


@pytest.mark.parametrize("kind, build", [
    ("vision", lambda root: image_manifest(make_images(root, {"cat": 4, "dog": 4, "owl": 3}))),
    ("audio", lambda root: audio_manifest(make_clips(root, {"cat": 3, "dog": 3, "owl": 3}, seconds=0.1))),
])
def test_folder_outside_the_configured_labels_is_named(tmp_path, kind, build):
    manifest = build(tmp_path / "ds")
    assert validate(kind, manifest, {"labels": ["cat", "dog", "owl"]}).success
    report = validate(kind, manifest, {"labels": ["cat", "dog", "fox"]})
    failed = label_failures(report)
    assert set(failed) == {IN_SET, CONTAINS}
    owls = sorted(p for p in manifest["path"] if p.startswith("owl/"))
    assert sorted(o["path"] for o in failed[IN_SET]["offenders"]) == owls
    assert failed[CONTAINS]["missing"] == ["fox"]
    assert "owl/000" in report.summary() and "missing fox" in report.summary()


def test_text_uses_the_same_label_set_rule(tmp_path):
    root = tmp_path / "t"
    write_csv(root, "a.csv", good_rows(10) + ["bonjour,fr"])
    report = validate("text", text_manifest(root), {"labels": ["de", "en"], "min_per_class": 1,
                                                    "min_share_of_fair": 0})
    failed = label_failures(report)
    assert list(failed) == [IN_SET] and failed[IN_SET]["offenders"] == [{"path": "a.csv", "row": 21}]


def test_numeric_labels_match_folder_names_and_bad_settings_are_refused(tmp_path):
    manifest = image_manifest(make_images(tmp_path / "ds", {"0": 3, "1": 3}))
    assert validate("vision", manifest, {"labels": [0, 1]}).success
    with pytest.raises(ConfigError, match=r"labels: expected a list of class names, got 'cat,dog'"):
        validate("vision", manifest, {"labels": "cat,dog"})
