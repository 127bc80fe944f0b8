"""Folders under the raw root that are not datasets fail visibly in Dagster, naming the folder or file,
while the good lanes beside them still materialise."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, define_asset_job, materialize

import tiny_data
from unified_pipeline.assets.graph import data_lanes, data_selection
from unified_pipeline.assets.json_io import JsonIOManager
from unified_pipeline.datasets import discover, undetected


def raw() -> Path:
    return Path(os.environ["UNIFIED_DATA"])


def run_lanes():
    refs, assets = data_lanes(lambda kind: {})
    with DagsterInstance.ephemeral() as instance:
        result = materialize(assets, instance=instance, resources={"io_manager": JsonIOManager()},
                             raise_on_error=False)
    failures = {e.step_key: e.event_specific_data for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    checks = {c.asset_key.to_user_string(): c.passed for c in result.get_asset_check_evaluations()}
    return refs, failures, done, checks


def failure_text(data) -> str:
    return (data.user_failure_data.description if data.user_failure_data else "") + data.error.message


@pytest.mark.parametrize("files, named", [
    ({}, r"raw/empty_one: dataset folder holds no files"),
    ({"notes.xyz": b"x", "more/readme.doc": b"y"}, r"raw/empty_one/notes\.xyz: unknown file type '\.xyz' \(and 1 more\)"),
])
def test_unrecognised_folder_fails_alone_naming_it(home, files, named):
    tiny_data.text(raw())
    bad = raw() / "empty_one"
    bad.mkdir()
    for rel, data in files.items():
        (bad / rel).parent.mkdir(parents=True, exist_ok=True)
        (bad / rel).write_bytes(data)
    refs, failures, done, checks = run_lanes()
    assert [r.name for r in refs] == ["tiny_text"]
    assert list(failures) == ["unrecognised__empty_one"]
    assert re.search(named, failure_text(failures["unrecognised__empty_one"]))
    assert {"tiny_text/manifest", "tiny_text/tensors"} <= done and checks == {"tiny_text/manifest": True}


def test_folder_fixed_after_loading_asks_for_a_reload(home):
    tiny_data.text(raw())
    (raw() / "later").mkdir()
    refs, assets = data_lanes(lambda kind: {})
    (raw() / "later" / "data.csv").write_text("text,label\nhello,en\nhallo,de\n", encoding="utf-8")
    (unrecognised,) = [a for a in assets if a.key.path[0] == "unrecognised"]
    with DagsterInstance.ephemeral() as instance:
        result = materialize([unrecognised], instance=instance, raise_on_error=False)
    (failure,) = [e.event_specific_data for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "raw/later is now a text dataset; reload the code location" in failure_text(failure)


def test_invalid_and_colliding_folder_names_get_distinct_valid_keys(home):
    for name in ("Bad.Name", "Bad_Name", "bad name"):
        (raw() / name).mkdir()
    refs, assets = data_lanes(lambda kind: {})
    keys = sorted(a.key.to_user_string() for a in assets)
    assert refs == [] and keys == ["unrecognised/Bad_Name", "unrecognised/Bad_Name_", "unrecognised/bad_name"]
    Definitions(assets=assets, jobs=[define_asset_job("data", selection=data_selection(refs))]).resolve_job_def("data")
    assert "invalid dataset name 'Bad.Name'" in undetected()["Bad.Name"]


def test_reasons_name_the_file_or_the_layout(home):
    (raw() / "loose_images").mkdir()
    for i in range(4):
        (raw() / "loose_images" / f"{i}.png").write_bytes(b"not checked here")
    (raw() / "clips" / "a").mkdir(parents=True)
    (raw() / "clips" / "a" / "x.mp3").write_bytes(b"ID3")
    why = undetected()
    assert why["clips"].startswith(f"{raw() / 'clips' / 'a' / 'x.mp3'}: unknown file type '.mp3'")
    assert ".wav" in why["clips"] and "data/README.md" in why["clips"]
    assert "cannot tell which kind of dataset this is from its files (0.png, 1.png, 2.png and 1 more)" in why["loose_images"]
    assert discover() == []


def test_data_job_selects_the_unrecognised_assets(home):
    tiny_data.text(raw())
    (raw() / "junk").mkdir()
    refs, assets = data_lanes(lambda kind: {})
    job = Definitions(assets=assets, jobs=[define_asset_job("data", selection=data_selection(refs))]).resolve_job_def("data")
    assert {"unrecognised__junk", "tiny_text__manifest", "tiny_text__tensors"} <= set(job.graph.node_dict)
