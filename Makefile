# `make demo` and `make test` work from a fresh clone with only Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package metadata changes. torch comes from the `train` extra (pinned CPU wheel).
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,train]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/skyfuse run --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/transport.py --json out/bench/transport.json
	$(BIN)/python -m benchmarks.pipeline_sustained --json out/bench/pipeline.json
	$(BIN)/python -m benchmarks.sink --json out/bench/sink.json
	$(BIN)/python benchmarks/engines.py --json out/bench/engines.json
	$(BIN)/python benchmarks/calibration.py --json out/bench/calibration.json
	$(BIN)/python benchmarks/metrics_reference.py --json out/bench/metrics.json
	$(BIN)/python benchmarks/registration_stages.py --json out/bench/registration_stages.json
	$(BIN)/python benchmarks/registration_floor.py --json out/bench/registration_floor.json

clean:
	rm -rf $(VENV) out
