# make train   — create .venv if missing, install, run `python -m pipeline.train $(ARGS)`
# make test    — install, then ruff, mypy and the whole pytest suite
# make test-fast — the unit tests alone (no CLI runs, no Trainer fits): seconds, not minutes
# make gpu-check — on a GPU machine, every GPU check in one call (< 8 min on an H200); elsewhere prints the plan
# make gpu-wheels — the wheels gpu-check installs on a bare GPU machine (run here, where PyPI is reachable;
#                  wheels/ is git-ignored: a device call carries it)
VENV ?= .venv
PY := $(VENV)/bin/python
PACKAGES := $(VENV)/.packages-stamp
STAMP := $(VENV)/.installed-stamp
ARGS ?=
# Installed code that neither the pipeline nor its tests import: left to compile on use, if ever
NOT_IMPORTED := /(databricks/sdk|mypy|mypyc|pip|setuptools|pygments/lexers|torch/testing/_internal|numpy/(f2py|distutils)|sympy/(physics|combinatorics|stats|holonomic|vector|liealgebras|categories|diffgeom|codegen|crypto|benchmarks)|[^/]+/tests?)/

.PHONY: install train test test-fast lint tensorboard bench gpu-check gpu-wheels clean

$(PACKAGES): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev,slurm,mlflow]'
	touch $(PACKAGES)

# pip byte-compiles on one core, compileall on every core (134 → 113 s here), and not what no
# command imports (NOT_IMPORTED: a third of the bytes, 40 → 28 s); a file that does not compile
# is skipped, as pip skips it
$(STAMP): $(PACKAGES)
	$(PY) -m compileall -q -j 0 -x '$(NOT_IMPORTED)' "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) -m pipeline.train $(ARGS)

lint: $(PACKAGES)
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests
	$(PY) -m mypy --num-workers=auto  # a worker a core: 68 → 50 s from a cold cache here

# Lint and the byte-compile side by side: mypy keeps ~1.4 of the 2 cores busy, compileall takes
# the rest (89 → 79 s here from a cold start). Then two test workers, one a core: most of a CLI
# test is single-threaded.
test: $(PACKAGES)
	$(MAKE) --no-print-directory -j2 lint $(STAMP)
	$(PY) -m pytest -n auto --dist worksteal

test-fast: install
	$(PY) -m pytest tests/unit -q -n auto

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs --host 127.0.0.1

bench: install
	$(PY) -m pipeline.bench $(ARGS)

# No install: a bare GPU machine's python3 has torch and lightning; gpu-check adds the rest from wheels/.
gpu-check:
	PYTHONPATH=$(CURDIR)/src $(if $(wildcard $(PY)),$(PY),python3) -m pipeline.gpu_check

gpu-wheels: install
	$(PY) -m pip wheel --quiet --wheel-dir wheels 'hydra-core>=1.3,<1.4' 'omegaconf>=2.3,<2.4'
	for v in 3.10 3.11 3.12 3.13; do $(PY) -m pip download --quiet --no-deps --only-binary=:all: \
		--python-version $$v --platform manylinux2014_x86_64 --dest wheels 'google-crc32c>=1.5' 'pyyaml>=6' || exit 1; done

clean:
	rm -rf $(VENV) dist build .mypy_cache .ruff_cache .pytest_cache
