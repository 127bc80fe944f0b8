"""The project launches by name from its root: `dg launch --job ...` (a dg project), into the
project's Dagster instance."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_data

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def project_env(home, tmp_path):
    tiny_data.text(tmp_path / "raw")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "UNIFIED_PROGRESS_BAR": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return env, dagster_home


def _run(argv, env):
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_dg_finds_the_project_from_its_root(project_env):
    env, _ = project_env
    out = _run([str(BIN / "dg"), "list", "defs", "--json"], env)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    jobs = {j["name"] for j in json.loads(out.stdout)["jobs"]}
    assert {"collaborative_training", "quick_start", "data_lane"} <= jobs


def test_dg_launch_runs_into_the_project_instance(project_env):
    # The `dagster job execute -m unified_pipeline.definitions` form is run as the README writes it,
    # into the project's instance, by tests/test_readme_commands.py.
    from dagster import DagsterInstance, DagsterRunStatus

    env, dagster_home = project_env
    launched = _run([str(BIN / "dg"), "launch", "--job", "data_lane"], env)
    assert launched.returncode == 0, launched.stderr[-3000:]
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
    assert [r.job_name for r in runs] == ["data_lane"]
    assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)
