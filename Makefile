# Two entry points for a newcomer: `make test` and (with the service issue) `make up`.
# Both create .venv on first use; nothing else needs to be installed beforehand except Python 3.11.

VENV ?= .venv
PY := $(VENV)/bin/python
# glibc's default malloc makes CPU timings swing 2-25x on large tensors; these settings remove the swings.
# Allocations from 256 MiB up still go to mmap: a higher threshold fragments the heap on 512 px edits
# (measured: 24 GB and an OOM kill, against a 7.7 GB peak with this value).
export MALLOC_MMAP_THRESHOLD_ := 268435456
export MALLOC_TRIM_THRESHOLD_ := 68719476736
export MALLOC_TOP_PAD_ := 1073741824

.PHONY: install test lint up

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# the CUDA build of torch runs on CPUs too, and is what GPU servers need
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

# The service on the embedded defaults: embedded Redis (append-only, under ~/.local/share/editgan),
# one worker and the gateway on http://127.0.0.1:8000, serving the shipped demo model.
up: install
	$(VENV)/bin/editgan up
