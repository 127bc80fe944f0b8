# Everything goes through the project's own virtualenv; only python3 (3.10+) and make are needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
JOB ?= collaborative_training
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export GX_ANALYTICS_ENABLED := false
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: install run test dev sample-data dagster-home bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

sample-data: install
	@if [ -z "$$(ls -A data/raw 2>/dev/null)" ]; then $(BIN)/unified-pipeline sample-data; \
	else echo "data/raw has data; not writing samples (run $(BIN)/unified-pipeline sample-data to add them)"; fi

run: sample-data dagster-home
	$(BIN)/dagster job execute -m unified_pipeline.definitions -j $(JOB)

test: install
	$(BIN)/python -m pytest

dev: sample-data dagster-home
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf .unified .dagster_home
