# make train   — create .venv if missing, install, run `python -m pipeline.train $(ARGS)`
# make test    — install, then ruff, mypy and the whole pytest suite
# make test-fast — the unit tests alone (no CLI runs, no Trainer fits): seconds, not minutes
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: install train test test-fast lint tensorboard bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,slurm]'
	touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) -m pipeline.train $(ARGS)

lint: install
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not e2e" -q

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs --host 127.0.0.1

bench: install
	$(PY) -m pipeline.bench $(ARGS)

clean:
	rm -rf $(VENV) dist build .mypy_cache .ruff_cache .pytest_cache
