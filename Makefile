# Every target installs what it needs into .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test proto proto-check lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch; a bare `torch` requirement may pull a multi-GB CUDA build.
	$(PY) -m pip install -q 'torch==2.13.0' || $(PY) -m pip install -q 'torch>=2.2'
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dasgd-peer local --peers 4 --workload digits-mlp --strategy dasgd \
		--target-accuracy 0.95 --max-seconds 120 --step-delay-ms 10 \
		--summary-json out/demo-summary.json --plot out/demo-accuracy.png

test: $(STAMP)
	$(PY) -m pytest -q

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
		--grpc_python_out=proto proto/dasgd/v1/membership.proto proto/dasgd/v1/peer.proto

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/transport.py

clean:
	rm -rf $(VENV) out build *.egg-info
