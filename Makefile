# The README's two commands: `make book` and `make test`. Both set everything up on a fresh
# machine (virtual environment, Python packages, MathJax for offline pages, Chromium for the
# browser test, bubblewrap for the grading sandbox). `make serve` serves the built book on
# this machine only; `make bench` prints the benchmark tables.
#
# System packages come from apt where there is one (Debian, Ubuntu); elsewhere the commands
# say what to install (Homebrew names on macOS) and stop.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BOOK_STAMP := $(VENV)/.book-installed
TEST_STAMP := $(VENV)/.test-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# apt-get, if this machine has it (override with APT= to never use it)
APT ?= $(shell command -v apt-get 2>/dev/null)
# Linux, Darwin (macOS)...: what the grading sandbox and PyTorch's builds depend on
UNAME ?= $(shell uname -s)
# PyTorch's index of CPU wheels, so pip never pulls a multi-GB CUDA build of the oracle.
# Extra, not instead of PyPI, and for torch alone: where it cannot be reached pip warns,
# retries once (about a second where the name does not resolve, 2 x pip's timeout where the
# host does not answer) and takes the same build from the other sources (pip config list:
# a local wheel, a mirror). `make test TORCH_INDEX=` skips it.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# On Linux PyPI's torch is the CUDA build (0.5 GB, then ~3 GB of nvidia-* wheels), so the
# CPU build is asked for by its local version label: where no source has it pip stops at
# once, before any download. macOS wheels are CPU-only and unlabelled.
# `make test TORCH_BUILD=` accepts whichever build pip finds.
ifeq ($(UNAME),Linux)
TORCH_BUILD ?= +cpu
endif
PORT ?= 8000
MIN_PYTHON := 3.11

.PHONY: book test test-unit test-grading test-book bench serve clean distclean \
        python-check system-deps sandbox-deps

# Python >= 3.11: the pins are for it. Checked before a venv is made, and an existing venv
# made with another Python is named instead of reused.
# Once the venv exists only it is checked, so `make test` after `make book PYTHON=python3.11`
# needs no PYTHON= again. torch 2.13.0 and numba 0.68.1 have no wheels for macOS on x86_64.
python-check:
	@if [ -e $(VENV) ]; then \
	  $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	    echo "$(VENV) was made with $$($(PY) --version 2>&1 || echo 'a Python that no longer runs'); remove it with"; \
	    echo "'make distclean' and run make again (make book PYTHON=python3.11 chooses the interpreter)."; exit 1; }; \
	else \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	    echo "Python $(MIN_PYTHON) or newer is needed; '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing)."; \
	    echo "Choose another: make book PYTHON=python3.11 (or python3.12)"; exit 1; }; \
	  [ "$(UNAME)" != Darwin ] || [ "$$($(PYTHON) -c 'import platform; print(platform.machine())')" != x86_64 ] || { \
	    echo "'$(PYTHON)' is an x86_64 Python on macOS: torch 2.13.0 and numba 0.68.1 have no wheels for it."; \
	    echo "Use an arm64 Python on Apple silicon (make book PYTHON=/opt/homebrew/bin/python3.11), or Linux."; exit 1; }; \
	fi

$(PY): | python-check
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(BOOK_STAMP): requirements.txt pyproject.toml | python-check $(PY)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# torch alone first (no dependencies), so that only it is looked up on the CPU index; then the
# rest, torch's dependencies included, from the usual index.
TORCH_PIN = $$(grep -E '^torch==' requirements-test.txt | cut -d' ' -f1)$(TORCH_BUILD)
$(TEST_STAMP): requirements-test.txt $(BOOK_STAMP)
	$(PY) -m pip install -q --no-deps --retries 1 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  "$(TORCH_PIN)" || { \
	  echo "No $(TORCH_PIN) (PyTorch's CPU build) from TORCH_INDEX=$(TORCH_INDEX) nor pip's own sources."; \
	  echo "Point TORCH_INDEX at a reachable copy of PyTorch's CPU index, or take PyPI's build (CUDA on"; \
	  echo "Linux: several GB) with: make test TORCH_BUILD="; exit 1; }
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

# npm (to vendor MathJax), Chromium (browser test), a CJK font (the glossary's Chinese terms
# in screenshots) and bubblewrap (the sandbox autograding runs every submission in): Debian
# packages where apt exists; elsewhere a message naming what to install.
ifneq ($(APT),)
APT_INSTALL = $(SUDO) $(APT) update -qq && $(SUDO) $(APT) install -y -qq --no-install-recommends
system-deps: npm-dep
	@tools/find_chromium.sh >/dev/null && dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || \
	  { $(APT_INSTALL) chromium fonts-wqy-microhei; }
npm-dep:
	@command -v npm >/dev/null || { $(APT_INSTALL) npm; }
sandbox-deps:
	@command -v bwrap >/dev/null || { $(APT_INSTALL) bubblewrap; }
else
system-deps: npm-dep
	@tools/find_chromium.sh >/dev/null || { \
	  echo "No Chromium or Chrome found: install one (macOS: brew install --cask chromium) or set"; \
	  echo "CHROMIUM=/path/to/it. Without it the browser test is skipped."; }
npm-dep:
	@command -v npm >/dev/null || { \
	  echo "npm is needed to vendor MathJax for the book: install Node.js (macOS: brew install node)."; exit 1; }
ifeq ($(UNAME),Linux)
sandbox-deps:
	@command -v bwrap >/dev/null || { \
	  echo "bubblewrap (bwrap) is needed: autograding runs every submission in its sandbox. Install it"; \
	  echo "(dnf install bubblewrap, pacman -S bubblewrap, zypper install bubblewrap, apk add bubblewrap)."; exit 1; }
else
sandbox-deps:
	@echo "No bubblewrap on $(UNAME) (it needs Linux): the sandbox tests skip, and so do the grading tests."
endif
endif
.PHONY: npm-dep

book: $(BOOK_STAMP) npm-dep
	tools/vendor_mathjax.sh
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book is in _build/html/index.html; 'make serve' serves it with working search."

# Reading the built book: a server on this machine only, since browsers block the search
# index's requests from file:// pages.
serve:
	@[ -f _build/html/index.html ] || { echo "No built book: run 'make book' first."; exit 1; }
	@echo "Serving the book at http://127.0.0.1:$(PORT)/ (Ctrl-C stops it)"
	$(PYTHON) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

# Tests are chosen by their markers (pyproject.toml): slow ones drive nbgrader, build packages
# or read the built book; "book" ones need the built book; "sandbox" ones grade in bubblewrap.
# The doctests are every example in the package's docstrings.
test-unit: $(TEST_STAMP) sandbox-deps
	$(PY) -m pytest -q --doctest-modules bnref
	$(PY) -m pytest tests -q -m "not slow"

# The nbgrader pipeline and the attacks grade in the bubblewrap sandbox: Linux only.
ifeq ($(UNAME),Linux)
GRADING_MARKS := slow and not book
else
GRADING_MARKS := slow and not book and not sandbox
endif
test-grading: $(TEST_STAMP) sandbox-deps
ifneq ($(UNAME),Linux)
	@echo "SKIPPED the tests marked 'sandbox' (the nbgrader pipeline, the attacks): they grade in the"
	@echo "bubblewrap sandbox, which needs Linux. Run make test on a Linux machine for them."
endif
	$(PY) -m pytest tests -q -m "$(GRADING_MARKS)"

test-book: $(TEST_STAMP) system-deps book
	CHROMIUM="$$(tools/find_chromium.sh || true)" $(PY) -m pytest tests -q -m book

test: test-unit test-grading test-book

bench: $(TEST_STAMP) sandbox-deps
	$(PY) benchmarks/bench_cpu.py
	$(PY) benchmarks/bench_grading.py
	$(PY) benchmarks/bench_gpu_host.py
	-$(PY) benchmarks/bench_gpu.py

clean:
	rm -rf _build .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) build dist *.egg-info book/_static/mathjax
