# imagen-ray developer commands. `make setup` is implied by every target that needs it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SRC    := imagen_ray tests $(wildcard bench)
# Tests and tools must never reach a model hub or W&B's servers.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help setup demo test test-fast test-cluster lint format typecheck bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# constraints.txt pins every dependency, torch to the small CPU wheel (2.13.0);
	# the package itself only asks for ranges.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with pinned dev installs (CPU torch)

demo: $(STAMP)  ## train, serve and evaluate a tiny cascade on this machine's CPU (docs/demo.md)
	$(BIN)/imagen-ray demo --out runs/demo

test: $(STAMP)  ## run the test suite (all but the multi-run cluster tests)
	$(BIN)/python -m pytest tests -m "not cluster" --durations=15

test-cluster: $(STAMP)  ## the multi-run cluster, storage and elastic-resume tests (CI runs them too)
	$(BIN)/python -m pytest tests -m cluster --durations=15

test-fast: $(STAMP)  ## skip the slow end-to-end tests
	$(BIN)/python -m pytest tests -m "not slow"

lint: $(STAMP)  ## ruff lint + format check
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

typecheck: $(STAMP)  ## mypy on the package
	$(BIN)/mypy imagen_ray

bench: $(STAMP)  ## run every benchmark in bench/, one after another, into bench/results.json
	$(BIN)/python bench/all.py --out bench/results.json

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .mypy_cache build *.egg-info
