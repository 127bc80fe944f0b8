# Everything goes through the project's own virtualenv; only python3 (3.11 or 3.12) and make are needed.
# The virtualenv holds exactly the versions in uv.lock; uv itself is bootstrapped from the registry
# into .tools/ at the version (and wheel hashes) in tools/uv-requirements.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
JOB ?= collaborative_training
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export GX_ANALYTICS_ENABLED := false
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: install bytecode run test dev sample-data dagster-home bench clean distclean lock lock-upgrade check-lock

$(UV): tools/uv-requirements.txt
	test -x .tools/bin/python || $(PY) -m venv .tools
	.tools/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r tools/uv-requirements.txt
	touch $@

# --locked refuses to install when pyproject.toml and uv.lock disagree; sync removes anything not in the lock.
# The venv is seeded with pip so tools that read `pip freeze` work; sync leaves the seed alone.
# Bytecode is compiled at install: where PYTHONDONTWRITEBYTECODE is set (CI images, containers) Python
# would otherwise compile dagster, torch and pandas again in every process (each Dagster step, each
# CLI call, each test subprocess): 7.4 s against 3.2 s to import them on this 2-core machine.
$(BIN)/.installed: pyproject.toml uv.lock $(UV)
	test -x $(BIN)/python || $(UV) venv --seed -q --python $(PY) $(VENV)
	$(UV) sync --locked --extra dev --compile-bytecode --python $(PY)
	touch $@

# The project's own modules, compiled beside their sources (an edited file is recompiled here, and a
# stale .pyc is never used: Python checks it against the source's mtime).
bytecode: install
	@$(BIN)/python -m compileall -q -j 0 unified_pipeline bench > /dev/null

install: $(BIN)/.installed

# Re-resolve after editing pyproject.toml, keeping every other pin; lock-upgrade moves all pins on purpose.
lock: $(UV)
	$(UV) lock

lock-upgrade: $(UV)
	$(UV) lock --upgrade

# The lock matches pyproject.toml and .venv holds exactly what the lock says.
check-lock: $(UV)
	$(UV) lock --check
	$(UV) sync --locked --extra dev --check

dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

sample-data: install
	@if [ -z "$$(ls -A data/raw 2>/dev/null)" ]; then $(BIN)/unified-pipeline sample-data; \
	else echo "data/raw has data; not writing samples (run $(BIN)/unified-pipeline sample-data to add them)"; fi

run: sample-data dagster-home bytecode
	$(BIN)/dagster job execute -m unified_pipeline.definitions -j $(JOB)

test: install bytecode
	$(BIN)/python -m pytest

dev: sample-data dagster-home bytecode
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: install bytecode
	$(BIN)/python -m bench.run

clean:
	rm -rf .unified .dagster_home

distclean: clean
	rm -rf $(VENV) .tools

# A Celery cluster on this machine (redis-server and postgresql from apt): see docs/scale-out.md.
.PHONY: cluster-up cluster-down
cluster-up: install
	$(BIN)/python -m unified_pipeline.cluster up

cluster-down:
	$(BIN)/python -m unified_pipeline.cluster down
