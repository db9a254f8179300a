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

.PHONY: setup reproduce test lint figures book lab bench clean

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

# Unit and integration tests, then nbval executes every notebook with its smoke defaults, then the smoke
# pipeline runs them again through papermill (the run cache is warm by then, so nothing trains twice), then the
# paper profile's code path at tiny scale (params/paper-tiny.yaml: every stage and ablation, bf16 stage 1, on a
# random 4-layer BERT; 7.5 minutes on 2 cores from an empty run cache).
test: setup lint
	$(BIN)/python -m pytest tests --ignore=tests/test_pipeline.py --nbval-lax notebooks
	$(BIN)/python -m pytest tests/test_pipeline.py -k "not paper_tiny"
	$(BIN)/python -m pytest tests/test_pipeline.py -k paper_tiny

# Style and obvious bugs (pyproject.toml [tool.ruff]); part of `make test`.
lint: setup
	$(BIN)/ruff check .

# A static HTML site of the published notebooks (docs/notebooks/) in build/book/ (nbconvert, no Node).
book: setup
	$(BIN)/python tools/build_book.py

bench: setup
	$(BIN)/python bench/encode.py

lab: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,lab]"
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs build .pytest_cache
