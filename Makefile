# sinklens: two commands. `make book` builds the executed book; `make test` runs every test.
# Both create .venv from requirements.lock when missing or out of date.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sinklens-installed

.PHONY: book test setup assets zoo zoo-tiny chapters html clean bench chromium student

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)

assets: setup
	$(PY) -m sinklens.book assets

# The book's trained models (4 residual schemes x 3 seeds, "small"): trained once, cached.
zoo: assets
	$(PY) -m sinklens.zoo --size small --jobs 2

# The tests' trained models ("tiny", seed 0), trained side by side before the chapters need them.
zoo-tiny: assets
	$(PY) -m sinklens.zoo --size tiny --seeds 0 --jobs 2

chapters: zoo
	$(PY) -m sinklens.book execute --mode book --jobs 2

html: setup
	$(PY) -m sinklens.book build

book: chapters
	@$(PY) -m sinklens.book build | tail -n 1

# Debian's chromium for tests/test_browser.py (the built book opened in a headless browser);
# installed only when no `chromium` is on PATH. Playwright drives it: no browser is downloaded.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

test: zoo-tiny chromium
	$(PY) -m pytest

# The chapters with every exercise solution replaced by a stub, for teaching: make student OUT=dir
student: setup
	$(PY) -m sinklens.exercises student $(or $(OUT),student)

bench: setup
	$(PY) benchmarks/bench_scores.py
	$(PY) benchmarks/bench_training.py

clean:
	rm -rf book/_build book/chapters
