"""The executor's forkserver imports the instance's storage modules, so a step opening the instance imports none."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run in a fresh interpreter: this one has imported most of Dagster already.
OPEN_AFTER_PRELOAD = """
import json, sys
from unified_pipeline.dagster_home import preload_instance_modules
preload_instance_modules(sys.argv[1])
before = set(sys.modules)
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
with DagsterInstance.from_ref(InstanceRef.from_dir(sys.argv[1])) as instance:
    instance.get_runs(limit=1)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_opening_the_instance_after_the_preload_imports_no_storage_module(tmp_path):
    from unified_pipeline.dagster_home import instance_modules

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    names = instance_modules(home)
    assert any(".storage." in n for n in names), names  # the configured storage classes are named
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(home)}
    for _ in range(2):  # the first open creates the instance's databases, the second is what a step does
        out = subprocess.run([sys.executable, "-c", OPEN_AFTER_PRELOAD, str(home)], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        new = json.loads(out.stdout.strip().splitlines()[-1])
        heavy = [m for m in new if m.split(".")[0] in {"dagster", "sqlalchemy", "alembic", "upath", "fsspec"}]
        assert heavy == [], heavy


def test_no_instance_folder_means_nothing_to_preload(tmp_path, monkeypatch):
    from unified_pipeline.dagster_home import instance_modules, preload_instance_modules

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert instance_modules() == []
    preload_instance_modules(tmp_path / "missing")  # a bad or missing folder is left to whatever opens it
