# The README's two commands: `make book` and `make test`. Both set everything up on a fresh
# machine (virtual environment, Python packages, MathJax for offline pages, Chromium for the
# browser test). `make bench` prints the benchmark tables.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BOOK_STAMP := $(VENV)/.book-installed
TEST_STAMP := $(VENV)/.test-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: book test test-unit test-grading test-book bench clean system-deps sandbox-deps

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(BOOK_STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(TEST_STAMP): requirements-test.txt $(BOOK_STAMP)
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

# npm (to vendor MathJax), Chromium (browser test) and a CJK font (the glossary's Chinese
# terms in screenshots) come from Debian's packages.
system-deps:
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq npm; }
	@[ -x /usr/bin/chromium ] && dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium fonts-wqy-microhei; }

# bubblewrap: the sandbox that autograding runs every submission in.
sandbox-deps:
	@command -v bwrap >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends bubblewrap; }

book: $(BOOK_STAMP)
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq npm; }
	tools/vendor_mathjax.sh
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is in _build/html/index.html"

DOCTESTED := bnref/functional.py bnref/layer.py bnref/fold.py bnref/gradcheck.py bnref/backend.py bnref/data.py bnref/mlp.py bnref/widgets.py bnref/experiments.py

test-unit: $(TEST_STAMP) sandbox-deps
	$(PY) -m pytest -q --doctest-modules $(DOCTESTED)
	$(PY) -m pytest tests -q -m "not slow" --ignore=tests/test_book_browser.py

test-grading: $(TEST_STAMP) sandbox-deps
	$(PY) -m pytest tests/test_nbgrader_pipeline.py tests/test_grading_attacks.py -q

test-book: $(TEST_STAMP) system-deps book
	$(PY) -m pytest tests/test_book_browser.py -q

test: test-unit test-grading test-book

bench: $(TEST_STAMP) sandbox-deps
	$(PY) benchmarks/bench_cpu.py
	$(PY) benchmarks/bench_grading.py
	-$(PY) benchmarks/bench_gpu.py

clean:
	rm -rf _build .pytest_cache .hypothesis
