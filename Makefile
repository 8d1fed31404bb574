# `make demo` and `make test` work from a fresh clone with only Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-triton lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the package metadata changes. torch comes from the `train` extra (pinned CPU wheel).
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,train,triton]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/skyfuse run --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q --ignore=tests/test_triton.py

# A real Triton server for the `triton` engine's test: nvidia-pytriton bundles `tritonserver` (Python
# backend only) and pins numpy<2, so it gets its own environment; ONNX Runtime serves the graph inside it.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

$(TRITON_STAMP):
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install --quiet nvidia-pytriton==0.7.0 onnxruntime
	touch $(TRITON_STAMP)

test-triton: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m pytest -q tests/test_triton.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.transport --json out/bench/transport.json
	$(BIN)/python -m benchmarks.pipeline_sustained --json out/bench/pipeline.json
	$(BIN)/python -m benchmarks.sink --json out/bench/sink.json
	$(BIN)/python -m benchmarks.stream --pipeline --json out/bench/stream.json
	$(BIN)/python -m benchmarks.engines --json out/bench/engines.json
	$(BIN)/python -m benchmarks.calibration --json out/bench/calibration.json
	$(BIN)/python -m benchmarks.metrics_reference --json out/bench/metrics.json
	$(BIN)/python -m benchmarks.registration_stages --json out/bench/registration_stages.json
	$(BIN)/python -m benchmarks.misalign_ranges --json out/bench/misalign_ranges.json
	$(BIN)/python -m benchmarks.registration_floor --json out/bench/registration_floor.json
	$(BIN)/python -m benchmarks.registration_floor --protocol roadscene-misaligned-large \
		--json out/bench/registration_floor-large.json

clean:
	rm -rf $(VENV) $(TRITON_VENV) out
