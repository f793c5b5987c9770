# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv with Python 3.12.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

# A working python3.12: the user's on PATH first (pyenv's shim fails when 3.12 is not the active
# version, so each candidate is run, not just found), then pyenv's installs.
PYTHON312 := $(shell for c in python3.12 $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12 2>/dev/null) /usr/bin/python3.12 /usr/local/bin/python3.12; do \
	  if "$$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; then echo "$$c"; break; fi; done)

.PHONY: demo test test-all lint robosuite-env clean-venv

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then echo "error: no Python 3.12 found (tried python3.12 on PATH and pyenv); install one, e.g. 'pyenv install 3.12'" >&2; exit 2; fi
	@test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[lerobot,sim,dev,onnx,ray]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rtdp demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

test-all: $(STAMP)
	$(VENV)/bin/pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check rtdp tests benchmarks

# robosuite needs numpy<2 and mujoco<3.4, which LeRobot cannot share: it gets its own environment and is
# reached from the main one through `rtdp serve-env` (ZeroMQ).
ROBOSUITE_VENV := .venv-robosuite
robosuite-env: $(ROBOSUITE_VENV)/.installed
$(ROBOSUITE_VENV)/.installed: pyproject.toml
	@if [ -z "$(PYTHON312)" ]; then echo "error: no Python 3.12 found" >&2; exit 2; fi
	@test -x $(ROBOSUITE_VENV)/bin/python || $(PYTHON312) -m venv $(ROBOSUITE_VENV)
	$(ROBOSUITE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(ROBOSUITE_VENV)/bin/python -m pip install --quiet "robosuite==1.5.2" "mujoco>=3.2,<3.4" "numpy<2" pyzmq msgpack "gymnasium>=1.0" rich pytest pytest-timeout
	$(ROBOSUITE_VENV)/bin/python -m pip install --quiet --no-deps -e .
	MUJOCO_GL=egl $(ROBOSUITE_VENV)/bin/python -c "import rtdp.envs as e; e.make('robosuite/lift').reset(seed=0)"
	@touch $@

clean-venv:
	rm -rf $(VENV) $(ROBOSUITE_VENV)
