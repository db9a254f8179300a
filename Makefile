# The README's commands. `make reproduce` and `make test` work on a fresh machine: they create .venv first.
PYTHON    ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
# torch 2.13.0: on this CPU-only environment pip takes the CPU build from local disk; on a GPU box
# PyPI's Linux wheel of the same version is the CUDA build. TORCH_SPEC is passed to pip unquoted, so it may carry
# pip arguments: make setup TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'
# (quote a requirement with < or > inside it: TORCH_SPEC="'torch>=2.4,<3'"). An existing .venv keeps its torch:
# make clean first to reinstall.
TORCH_SPEC ?= torch==2.13.0
PROFILE   ?= cpu
SEEDS     ?=
comma     := ,
space     := $(subst ,, )
# SEEDS="42 43 44" runs every seed's models (the committed results/cpu run); the cache keeps what is done
SEED_SET  := $(if $(strip $(SEEDS)),--set "seeds=[$(subst $(space),$(comma),$(strip $(SEEDS)))]")

.PHONY: setup reproduce test test-fast lint figures book lab bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# The embedded-default job: every notebook, in order, on the cpu profile (shipped MiniLM, Wiki1M subset).
reproduce: setup
	$(BIN)/python -m jtcse_lib pipeline --profile $(PROFILE) $(SEED_SET)

# Re-run the results and ablation notebooks from the cached runs (regenerates their tables and figures).
figures: setup
	$(BIN)/python -m jtcse_lib pipeline --profile $(PROFILE) --only 05 06 $(SEED_SET)

# The fast lane (under 3 minutes): every test not marked slow (nothing trains a model or runs a notebook). Run it
# after every change.
test-fast: setup lint
	$(BIN)/python -m pytest tests -m "not slow" -q

# Everything: the fast lane first (it fails in minutes), then the slow tests: trainings, subprocess stops, the
# notebooks executed once through papermill (the smoke pipeline), and the paper profile's code path at tiny scale
# (params/paper-tiny.yaml: every stage and ablation, bf16 stage 1, on a random 4-layer BERT).
test: setup lint
	$(BIN)/python -m pytest tests -m "not slow" -q
	$(BIN)/python -m pytest tests -m slow

# Style and obvious bugs (pyproject.toml [tool.ruff]); part of `make test`.
lint: setup
	$(BIN)/ruff check .

# The offline book in build/book/ (tools/build_book.py): the reference pages and the published notebooks, with a
# sidebar, previous/next links and MathJax served locally. Its own small environment: no torch, no training setup.
BOOK_VENV ?= .venv-book
book: $(BOOK_VENV)/.installed
	$(BOOK_VENV)/bin/python tools/build_book.py

$(BOOK_VENV)/.installed: tools/book-requirements.txt
	$(PYTHON) -m venv $(BOOK_VENV)
	$(BOOK_VENV)/bin/python -m pip install --quiet -r tools/book-requirements.txt
	touch $@

bench: setup
	$(BIN)/python bench/encode.py

lab: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,lab]"
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) $(BOOK_VENV) runs build .pytest_cache
