# Pythia: every set-up step a fresh machine needs. `make test` and `make serve` install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data/shapes
STAMP := $(VENV)/.installed

.PHONY: install test lint data serve bench bench-train bench-serve clean

install: $(STAMP)

# Reinstalls when pyproject.toml changes. torch/torchvision resolve to the local
# 2.14.1 / 0.29.1 wheels where pip's constraints point at them, to PyPI's otherwise.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

data: install
	$(PY) -m training.data.shapes --out $(DATA_DIR)

# The main job: serve the ShapesWorld multi-task demo model, trained by our own trainer on
# first use (a few minutes on CPU) and cached in $(DEMO_RUN)/release.
DEMO_RUN ?= runs/demo
HOST ?= 127.0.0.1
PORT ?= 8000
serve: install
	$(PY) -m service.demo --run-dir $(DEMO_RUN) --data-dir $(DATA_DIR)
	$(PY) -m service --model demo=$(DEMO_RUN)/release --host $(HOST) --port $(PORT)

bench: install
	$(PY) bench/data.py

# Trains every shipped ShapesWorld config (training/configs/shapes/) against its target.
bench-train: install
	$(PY) bench/train.py

# Serves the demo model in-process at several concurrencies (wrk from Debian) beside LitServe.
bench-serve: install
	$(PY) -m pip install --quiet -e '.[bench]'
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) bench/serve.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
