# Every target installs what it needs into .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Where pip finds torch. Empty: pip's own configuration (PyPI, or a local
# wheel directory); PyPI's Linux x86_64 torch is the multi-GB CUDA build, so
# for the CPU build on such a machine run
#   make TORCH_INDEX=https://download.pytorch.org/whl/cpu test
TORCH_INDEX ?=
TORCH_PIP := $(if $(strip $(TORCH_INDEX)),--index-url $(strip $(TORCH_INDEX)))

.PHONY: demo test proto lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from TORCH_INDEX when given (see above).
	$(PY) -m pip install -q $(TORCH_PIP) 'torch==2.13.0' \
		|| $(PY) -m pip install -q $(TORCH_PIP) 'torch>=2.2'
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
