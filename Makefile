# The README's commands. `make reproduce` and `make test` work on a fresh machine: they create .venv first.
PYTHON    ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
# torch 2.13.0: on this CPU-only environment pip takes the CPU build from local disk; on a GPU box
# PyPI's Linux wheel of the same version is the CUDA build. Override with TORCH_SPEC=... if needed.
TORCH_SPEC ?= torch==2.13.0
PROFILE   ?= cpu

.PHONY: setup reproduce test figures lab bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The embedded-default job on the shipped MiniLM backbone.
reproduce: setup
	$(BIN)/python -m jtcse_lib evaluate --model minilm --pooling cls --bootstrap 1000 --out results/$(PROFILE)/backbone_cls.json
	$(BIN)/python -m jtcse_lib evaluate --model minilm --pooling mean --bootstrap 1000 --out results/$(PROFILE)/backbone_mean.json

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/encode.py

lab: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,lab]"
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs .pytest_cache
