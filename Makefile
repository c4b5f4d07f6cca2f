# charlm: `make train` and `make test` each work on a fresh clone (they create .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/shakespeare.py:cpu10

.PHONY: install train test test-slow lint tb clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

train: install
	$(PY) -m charlm.train --config $(CONFIG)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check charlm configs experiments tests

tb: install
	$(VENV)/bin/tensorboard --logdir runs

clean:
	rm -rf $(VENV) runs .pytest_cache
