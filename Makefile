# Two commands do all set-up on a fresh machine:
#   make run    create .venv if missing, then run the default pipeline
#   make test   create .venv if missing, then run the test suite
VENV    ?= .venv
PY      := $(VENV)/bin/python
# This project's machines keep the CPU build of torch in /opt/wheels; uv does not read
# pip's config, so the location is passed explicitly (else torch comes as a CUDA build).
WHEELS  ?= /opt/wheels
FIND    := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
STAMP   := $(VENV)/.installed
# Telemetry off for everything make starts (the code sets these too).
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export ORT_DISABLE_TELEMETRY := 1
export DVC_NO_ANALYTICS := 1
export DO_NOT_TRACK := 1

.PHONY: setup run test test-fast repro lint lock clean-state dvc-yaml stack stack-down

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock overrides.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --python $(PY) $(FIND) --quiet --compile-bytecode --override overrides.txt \
	  -r requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) --quiet --no-deps -e .
	touch $(STAMP)

run: setup
	$(VENV)/bin/shrinkflow run $(ARGS)

test: setup
	$(VENV)/bin/pytest -q $(ARGS)

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow" $(ARGS)

# dvc repro runs `python -m shrinkflow.tasks STAGE`: the venv must come first on PATH.
repro: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/dvc repro $(ARGS)

# Style, the layer contract (layers import only downward; no Prefect in the library),
# and dvc.yaml up to date with the step registry.
lint: setup
	$(VENV)/bin/ruff check .
	$(PY) -m tests.contracts
	$(VENV)/bin/shrinkflow dvc-yaml --check

# Regenerate dvc.yaml after adding or changing a step kind.
dvc-yaml: setup
	$(VENV)/bin/shrinkflow dvc-yaml

# Re-resolve requirements.lock after changing dependencies in pyproject.toml.
lock: setup
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra openvino --extra litert --extra server \
	  --extra text \
	  --override overrides.txt $(FIND) --python-version 3.11 --no-header --quiet \
	  -o requirements.lock

# A team's servers on this machine (PostgreSQL, MLflow, Prefect + worker, Dask); then
# `source .shrinkflow/stack/stack.env`. stack-down keeps the data (ARGS=--purge deletes it).
stack: setup
	$(VENV)/bin/shrinkflow stack up $(ARGS)

stack-down: setup
	$(VENV)/bin/shrinkflow stack down $(ARGS)

clean-state:
	rm -rf mlflow.db mlartifacts .shrinkflow data/prepared models onnx metrics reports exports
