"""A failed model step's report: traceback, newest checkpoint, and a resume command that fits the run."""
import json

import click
import pytest
import yaml
from dagster import AssetKey, DagsterInstance
from dagster._cli import cli as dagster_cli
from dagster._core.storage.dagster_run import DagsterRun

from unified_pipeline.error_report import write_error_report
from unified_pipeline.errors import ConfigError
from unified_pipeline.resume import RunSpec, failed_run


def _raise(msg="loss is nan"):
    try:
        raise FloatingPointError(msg)
    except FloatingPointError as exc:
        return exc


def _parses_as_dagster_cli(args: list[str]) -> dict:
    """The arguments are accepted by the installed `dagster` CLI (options exist, files exist)."""
    ctx = click.Context(dagster_cli)
    group, name, rest = args[0], args[1], args[2:]
    command = dagster_cli.get_command(ctx, group).get_command(ctx, name)
    return command.make_context(name, list(rest)).params


def test_ui_run_resumes_its_asset_selection_with_its_config(home, monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))
    ckpt = home / "checkpoints" / "text_service" / "f00d" / "ckpt-000003"
    ckpt.mkdir(parents=True)
    (ckpt / "manifest.json").write_text("{}")
    config = {"ops": {"text_service": {"config": {"epochs": 3}}}}
    run = DagsterRun(job_name="__ASSET_JOB", run_id="0a1b2c3d-run", run_config=config,
                     asset_selection=frozenset({AssetKey(["text_service"]), AssetKey(["tiny_text", "tensors"])}))
    report = write_error_report("text_service", run.run_id, run.job_name, _raise(), run=run)
    text = report.read_text()
    assert report.name == "0a1b2c3d-run-text_service-error.md"
    assert "FloatingPointError: loss is nan" in text and "Traceback" in text and str(ckpt) in text
    saved = home / "reports" / "0a1b2c3d-run-run-config.yaml"
    assert yaml.safe_load(saved.read_text()) == config
    command = ("dagster asset materialize -m unified_pipeline.definitions "
               f"--select text_service,tiny_text/tensors -c {saved}")
    assert f"`{command}`" in text and "unified-pipeline train --resume 0a1b2c3d-run" in text
    assert "-j __ASSET_JOB" not in text

    spec = failed_run()
    params = _parses_as_dagster_cli(spec.dagster_args())
    assert params["select"] == "text_service,tiny_text/tensors" and params["config"] == (str(saved),)
    record = json.loads((home / "reports" / "0a1b2c3d-run-text_service-error.json").read_text())
    assert record["checkpoint"] == str(ckpt) and record["model"] == "text_service"


def test_named_job_without_config_is_rerun_by_name(home, monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))
    run = DagsterRun(job_name="vision_focus", run_id="run-2", run_config={})
    text = write_error_report("vision_service", run.run_id, run.job_name, _raise(), run=run).read_text()
    assert "`dagster job execute -m unified_pipeline.definitions -j vision_focus`" in text
    assert "newest checkpoint: none" in text and "run config" not in text
    params = _parses_as_dagster_cli(failed_run("run-2").dagster_args())
    assert params["job_name"] == "vision_focus" and params["config"] == ()


def test_run_is_read_from_the_instance_when_not_given(home, monkeypatch, tmp_path):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.add_run(DagsterRun(job_name="__ASSET_JOB", run_id="from-instance",
                                          run_config={"ops": {"x": {"config": {"seed": 1}}}},
                                          asset_selection=frozenset({AssetKey(["vision_service"])})))
    text = write_error_report("vision_service", run.run_id, run.job_name, _raise()).read_text()
    assert "--select vision_service -c " in text


def test_asset_job_with_unknown_selection_says_so(home, monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))
    text = write_error_report("vision_service", "lost-run", "__ASSET_JOB", _raise()).read_text()
    assert "resume: not known" in text and "-j __ASSET_JOB" not in text
    with pytest.raises(ConfigError, match="asset selection is unknown"):
        failed_run().dagster_args()


def test_newest_failure_wins_and_bad_ids_are_refused(home, monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))
    with pytest.raises(ConfigError, match="no failed run recorded"):
        failed_run()
    for run_id, job in (("old-run", "text_focus"), ("new-run", "vision_focus")):
        write_error_report("m", run_id, job, _raise(), run=DagsterRun(job_name=job, run_id=run_id))
    assert failed_run() == RunSpec("new-run", "vision_focus")
    assert failed_run("old").job == "text_focus"
    with pytest.raises(ConfigError, match="invalid run id"):
        failed_run("../etc")
    with pytest.raises(ConfigError, match="no failed run 'nope'"):
        failed_run("nope")
