"""The install is exactly the lock: pyproject.toml and uv.lock agree, the venv holds the locked
versions, and a PyTorch trio that does not belong together stops in one line."""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from unified_pipeline import install_check
from unified_pipeline.install_check import BrokenInstall, mismatch, require_consistent_install, require_loadable_extensions

ROOT = Path(__file__).resolve().parents[1]


def _uv() -> str:
    for candidate in (os.environ.get("UV"), str(ROOT / ".tools" / "bin" / "uv"), shutil.which("uv")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("uv not found: `make install` bootstraps it into .tools/bin/uv")


def _uv_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_OFFLINE": "1"}
    return subprocess.run([_uv(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_pyproject_pins_the_pytorch_trio_the_guard_expects():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {m[1]: m[2] for d in deps if (m := re.fullmatch(r"(torch|torchvision|torchaudio)==([\d.]+)", d))}
    assert pinned == install_check.LOCKED


def test_lock_agrees_with_pyproject():
    result = _uv_run("lock", "--check")
    assert result.returncode == 0, result.stderr


def test_lock_check_fails_when_pyproject_changes(tmp_path):
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    text = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text.replace('"scipy>=1.11"', '"scipy>=1.12"'))
    result = _uv_run("lock", "--check", cwd=tmp_path)
    # Offline, uv cannot re-resolve, so it stops at resolving; online it says the lock needs updating.
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr or "resolving dependencies" in result.stderr, result.stderr


def _locked_for_this_environment() -> dict[str, str]:
    """name -> version of every package the lock installs here with the `dev` extra."""
    result = _uv_run("export", "--frozen", "--extra", "dev", "--no-hashes", "--no-emit-project", "--no-header",
                     "--no-annotate")
    assert result.returncode == 0, result.stderr
    locked = {}
    for line in result.stdout.splitlines():
        requirement, _, marker = line.partition(";")
        if "==" not in requirement or (marker.strip() and not Marker(marker.strip()).evaluate()):
            continue
        name, version = requirement.strip().split("==")
        locked[canonicalize_name(name)] = version
    return locked


def test_venv_holds_exactly_the_locked_versions():
    locked = _locked_for_this_environment()
    seed = {"pip", "setuptools", "wheel", "unified-pipeline"}  # the venv's own tools and the project itself
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=sys.path)
                 if Path(str(d.locate_file(""))).resolve().is_relative_to(Path(sys.prefix).resolve())}
    differing = {n: (installed.get(n), v) for n, v in locked.items() if installed.get(n, "").split("+")[0] != v.split("+")[0]}
    extra = sorted(set(installed) - set(locked) - seed)
    assert not differing, f"installed/locked differ: {differing}"
    assert not extra, f"installed but not locked: {extra}"


@pytest.mark.parametrize("versions, why", [
    ({"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.1"}, "torchaudio must carry torch's version"),
    ({"torch": "2.11.0", "torchvision": "0.25.0", "torchaudio": "2.11.0"}, "needs torchvision 0.26.0"),
    ({"torch": "2.11.0+cu130", "torchvision": "0.26.0+cpu", "torchaudio": "2.11.0+cu130"}, "different builds"),
    ({"torch": "2.11.0", "torchvision": None, "torchaudio": "2.11.0"}, "missing"),
])
def test_mismatched_trio_is_named_with_versions_and_repair(versions, why):
    assert why in mismatch(versions)
    with pytest.raises(BrokenInstall) as err:
        require_consistent_install(versions)
    for name, version in versions.items():
        assert f"{name} {version or 'missing'}" in str(err.value)
    assert "make install" in err.value.hint


@pytest.mark.parametrize("versions", [
    {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"},
    {"torch": "2.11.0+cu130", "torchvision": "0.26.0+cu130", "torchaudio": "2.11.0+cu130"},
    {"torch": "2.12.1", "torchvision": "0.27.1", "torchaudio": "2.12.1"},
])
def test_trio_of_one_release_passes(versions):
    assert mismatch(versions) is None


def test_extension_that_cannot_load_is_one_line():
    def importer(name):
        if name == "torchaudio":
            raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace\nmore")
        return None

    with pytest.raises(BrokenInstall, match=r"^torchaudio cannot be loaded \(libtorchaudio.so: undefined symbol: "
                                            r"torch_exception_get_what_without_backtrace\); installed: torch "):
        require_loadable_extensions(importer)


@pytest.fixture
def fake_torchaudio_2_11_1(tmp_path):
    """A distribution record that shadows the installed torchaudio, as a newer release would."""
    info = tmp_path / "torchaudio-2.11.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def _assert_one_line(result: subprocess.CompletedProcess):
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert len(errors) == 1 and "torchaudio 2.11.1" in errors[0] and "make install" in errors[0], result.stderr


def test_cli_stops_in_one_line_on_a_mismatched_trio(fake_torchaudio_2_11_1, tmp_path):
    cli = Path(sys.executable).with_name("unified-pipeline")
    _assert_one_line(subprocess.run([str(cli), "data"], cwd=tmp_path, env=fake_torchaudio_2_11_1,
                                    capture_output=True, text=True, timeout=120))


def test_job_execute_stops_in_one_line_on_a_mismatched_trio(fake_torchaudio_2_11_1, tmp_path):
    dagster = Path(sys.executable).with_name("dagster")
    env = {**fake_torchaudio_2_11_1, "DAGSTER_HOME": str(tmp_path), "UNIFIED_HOME": str(tmp_path / "u")}
    _assert_one_line(subprocess.run(
        [str(dagster), "job", "execute", "-m", "unified_pipeline.definitions", "-j", "collaborative_training"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300))


def _make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "UV_OFFLINE": "1"}
    return subprocess.run(["make", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_make_check_lock_finds_the_venv_equal_to_the_lock():
    result = _make("check-lock")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Would make no changes" in result.stdout + result.stderr


def test_make_lock_targets_keep_or_move_pins_on_purpose(tmp_path):
    planned = _make("-n", "lock", "lock-upgrade").stdout
    assert ".tools/bin/uv lock\n" in planned and ".tools/bin/uv lock --upgrade" in planned
    for name in ("Makefile", "pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    (tmp_path / ".tools").symlink_to(ROOT / ".tools")
    before = (tmp_path / "uv.lock").read_text()
    result = _make("lock", cwd=tmp_path)  # nothing edited: every pin stays
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "uv.lock").read_text() == before
