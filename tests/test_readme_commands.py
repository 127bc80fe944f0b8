"""The README's commands, typed as written, in subprocesses on tiny data.

One `dagster job execute -m unified_pipeline.definitions -j collaborative_training -c run.yaml`
runs on the multiprocess executor. While it runs, `unified-pipeline pause/resume/stop` steer
vision_service: paused, it holds one device slot while audio_service and text_service train in
the other, which can only happen when model steps run in parallel. Afterwards the README's
`unified-pipeline predict`, `visualize` and `from unified_pipeline import load_model` run against
what the job registered, so README and code cannot drift apart.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tiny_data

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 600

pytestmark = pytest.mark.timeout(900)


def _preset(path: Path) -> Path:
    """The project's preset with budgets small enough for tiny data."""
    preset = json.loads((ROOT / "presets" / "training_preset.json").read_text())
    preset["training_scenarios"]["collaborative_training"].update(epochs=3, batch_size=8, checkpoint_interval=1)
    specific = preset["model_specific_presets"]
    for m in ("vision_service", "audio_service", "text_service"):
        specific[m] = {"batch_size": 8, "learning_rate": 0.005, "early_stopping_patience": 0}
    specific["text_service"].update(epochs=8, d_model=16, n_heads=2, n_layers=1)
    preset["data_preprocessing"]["audio"]["n_mels"] = 16  # the model's input width follows the data
    specific["multimodal_service"] = {"epochs": 3, "pairs_train": 300, "pairs_eval": 90, "batch_size": 32}
    specific["audio_student"] = {"epochs": 2, "batch_size": 8}
    specific["adaptive_learning_controller"] = {"budget_epochs": 1, "study_epochs": 1, "max_train_samples": 16,
                                                "max_val_samples": 8}
    path.write_text(json.dumps(preset))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    raw = tmp / "raw"
    tiny_data.vision(raw)
    tiny_data.spoken_numbers(raw)
    tiny_data.number_words(raw)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "UNIFIED_HOME": str(tmp / "home"), "UNIFIED_DATA": str(raw), "UNIFIED_PRESET": str(_preset(tmp / "preset.json")),
           "DAGSTER_HOME": str(tmp / "dagster_home"), "UNIFIED_PROGRESS_BAR": "0", "UNIFIED_THREADS_PER_STEP": "1",
           "GX_ANALYTICS_ENABLED": "false"}
    (tmp / "dagster_home").mkdir()
    shutil.copy(ROOT / "dagster.yaml", tmp / "dagster_home" / "dagster.yaml")
    return tmp, raw, env


def sh(env: dict, cwd: Path, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _progress(home: Path, model: str) -> dict:
    try:
        return json.loads((home / "progress" / f"{model}.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(what: str, cond, job: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert job.poll() is None, f"the job ended while waiting for {what}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.1)


SERVICES = ("vision_service", "audio_service", "text_service")
MIN_EPOCHS = 12  # each endless training is stopped after this many epochs


@pytest.fixture(scope="module")
def trained(project):
    """The main job, run as the README says, steered from the CLI while it runs."""
    tmp, raw, env = project
    home = tmp / "home"
    # The service models would train for ever: only `unified-pipeline stop` ends them, so every
    # command below surely lands mid-training, whatever the machine's speed.
    (tmp / "run.yaml").write_text("ops:\n" + "".join(
        f"  {m}:\n    config:\n      epochs: 100000\n      early_stopping_patience: 0\n" for m in SERVICES))
    log = tmp / "job.log"
    seen: dict = {}
    with open(log, "w") as out:
        job = subprocess.Popen(["dagster", "job", "execute", "-m", "unified_pipeline.definitions", "-j",
                                "collaborative_training", "-c", "run.yaml"],
                               env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    try:
        def running():
            states = {m: _progress(home, m) for m in SERVICES}
            now = [m for m, st in states.items() if st.get("status") == "running" and st.get("epoch", 0) >= 1]
            return sorted(now, key=lambda m: states[m]["started_at"]) if len(now) >= 2 else None

        first, second = _wait("two model steps training at once", running, job, log, timeout=600)[:2]
        seen["together"] = {m: _progress(home, m) for m in (first, second)}
        sh(env, tmp, "unified-pipeline", "pause", first)
        control = home / "control" / f"{first}.json"
        _wait("the pause to be picked up", lambda: not control.exists(), job, log, timeout=60)
        held = _progress(home, first)
        start = _progress(home, second)["epoch"]
        _wait(f"{second} to train on while {first} is paused",
              lambda: _progress(home, second)["epoch"] >= max(start + 2, MIN_EPOCHS), job, log)
        seen["paused"], seen["while_paused"] = _progress(home, first), held
        sh(env, tmp, "unified-pipeline", "resume", first)
        _wait("the resume to be picked up", lambda: not control.exists(), job, log, timeout=60)
        _wait(f"{first} to train on", lambda: _progress(home, first)["epoch"] >= max(held["epoch"] + 1, MIN_EPOCHS),
              job, log)
        for m in (first, second):
            sh(env, tmp, "unified-pipeline", "stop", m)
        (third,) = set(SERVICES) - {first, second}
        _wait(f"{third} to train", lambda: _progress(home, third).get("epoch", 0) >= MIN_EPOCHS, job, log)
        sh(env, tmp, "unified-pipeline", "stop", third)
        assert job.wait(timeout=JOB_TIMEOUT_S) == 0, log.read_text()[-6000:]
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    return {"tmp": tmp, "raw": raw, "env": env, "home": home, "log": log.read_text(), "order": (first, second, third),
            **seen}


def _registry(env: dict):
    from unified_pipeline.registry import ModelRegistry

    return ModelRegistry(Path(env["UNIFIED_HOME"]) / "registry")


def test_model_steps_run_in_parallel_and_control_commands_reach_the_lineage(trained):
    first, second, third = trained["order"]
    together = trained["together"]
    # Two model steps of one run, in two processes, both past their first epoch at one moment.
    assert together[first]["pid"] != together[second]["pid"]
    assert together[first]["run_id"] == together[second]["run_id"]
    # Paused, the first held still while the second trained on.
    assert trained["paused"]["epoch"] == trained["while_paused"]["epoch"]
    reg = _registry(trained["env"])
    commands = {}
    for m in SERVICES:
        v = reg.get(m, "latest")
        commands[m] = [{k: c[k] for k in c if k != "epoch"} for c in v.lineage["control_commands"]]
        assert v.lineage["hparams"]["epochs"] == 100000 and v.lineage["hparams"]["early_stopping_patience"] == 0
        assert MIN_EPOCHS <= json.loads((Path(v.path) / "history.json").read_text())[-1]["epoch"] < 100000
    assert commands[first] == [{"pause": True}, {"pause": False}, {"stop": True}]
    assert commands[second] == commands[third] == [{"stop": True}]


def test_every_model_of_the_job_registered_a_version(trained):
    reg = _registry(trained["env"])
    for m in ("adaptive_learning_controller", "vision_service", "audio_service", "text_service",
              "multimodal_service", "audio_student"):
        assert reg.get(m, "latest").name == f"{m}/v1", m
    out = sh(trained["env"], trained["tmp"], "unified-pipeline", "results", "--json")
    assert set(json.loads(out)["models"]) >= {"vision_service", "multimodal_service"}


def test_the_run_is_kept_in_the_projects_dagster_instance(trained):
    from dagster import DagsterInstance, DagsterRunStatus

    with DagsterInstance.from_config(trained["env"]["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
    assert [(r.job_name, r.status) for r in runs] == [("collaborative_training", DagsterRunStatus.SUCCESS)]


def _predict(trained, *args: str) -> list[list[str]]:
    out = sh(trained["env"], trained["tmp"], "unified-pipeline", "predict", *args)
    return [line.split("\t") for line in out.strip().splitlines()]


def test_predict_vision_text_audio_as_in_the_readme(trained):
    raw = trained["raw"]
    images = [str(raw / "tiny_images" / d / "11.png") for d in ("0", "1", "2")]
    got = _predict(trained, "vision_service", *images)
    assert [g[0] for g in got] == images and [g[1].split(" ")[0] for g in got] == ["0", "1", "2"]

    clips = [str(raw / "tiny_spoken" / w / "9.wav") for w in tiny_data.NUMBER_NAMES]
    got = _predict(trained, "audio_service", *clips)
    assert [g[1].split(" ")[0] for g in got] == list(tiny_data.NUMBER_NAMES)

    got = _predict(trained, "text_service", "uno", "dos")
    assert got[0][0] == "uno" and [g[1].split(" ")[0] for g in got] == ["1", "2"]


def test_predict_audio_top_3_as_in_the_readme(trained):
    clip = str(trained["raw"] / "tiny_spoken" / "two" / "9.wav")
    (got,) = _predict(trained, "audio_service", clip, "--top", "3")
    assert [part.split(" ")[0] for part in got[1].split(", ")][:1] == ["two"] and len(got[1].split(", ")) == 3


def test_predict_multimodal_as_in_the_readme(trained):
    raw = trained["raw"]

    def query(digit: str, word: str, text: str) -> str:
        return json.dumps({"image": str(raw / "tiny_images" / digit / "10.png"),
                           "audio": str(raw / "tiny_spoken" / word / "8.wav"), "text": text})

    # On tiny data the fusion head leans on the speech side: the negative differs there.
    same, other = query("2", "two", "two"), query("2", "zero", "two")
    got = _predict(trained, "multimodal_service", same, other)
    assert [g[0] for g in got] == [same, other]
    labels = [g[1].split(" ")[0] for g in got]
    assert labels[0] == "match" and labels[1] == "no_match"


@pytest.mark.parametrize("model", ["vision_service", "audio_service", "text_service", "multimodal_service"])
def test_visualize_writes_non_empty_curves(trained, tmp_path, model):
    out = sh(trained["env"], trained["tmp"], "unified-pipeline", "visualize", model, "--out", str(tmp_path / "plots"))
    written = [Path(line.strip()) for line in out.splitlines() if line.startswith("  ")]  # one indented path a plot
    assert {p.name for p in written} >= {"loss.png", "val_accuracy.png"} and {p.parent.name for p in written} == {model}
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000, p


def test_visualize_every_model(trained, tmp_path):
    out = sh(trained["env"], trained["tmp"], "unified-pipeline", "visualize", "--out", str(tmp_path / "plots"))
    written = [Path(line.strip()) for line in out.splitlines() if line.startswith("  ")]
    assert {p.parent.name for p in written} >= {"vision_service", "audio_service", "text_service",
                                                "adaptive_learning_controller"}
    assert all(p.stat().st_size > 5000 for p in written)


def test_python_load_model_as_in_the_readme(trained):
    code = ("from unified_pipeline import load_model; model = load_model('vision_service'); "
            "print(type(model).__name__, float(sum(p.double().abs().sum() for p in model.state_dict().values())))")
    name, total = sh(trained["env"], trained["tmp"], sys.executable, "-c", code).split()
    from safetensors.torch import load_file

    v = _registry(trained["env"]).get("vision_service", "production")
    weights = load_file(str(Path(v.path) / "weights.safetensors"))
    assert name == "VisionCNN" and float(total) == pytest.approx(float(sum(t.double().abs().sum() for t in weights.values())))
