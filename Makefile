# Two commands do all the set-up on a fresh machine:
#   make demo   -> transplant the built-in SmolLM2-135M onto the Llama-3 tokenizer and print before/after figures
#   make test   -> run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
# where /opt/wheels holds the CPU wheel it is used; elsewhere e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned; the project's range then installs nothing more.
	$(PY) -m pip install -q $(FIND_LINKS) $(TORCH_PIP_ARGS) torch==2.13.0
	$(PY) -m pip install -q $(FIND_LINKS) -e '.[dev]'
	touch $@

.PHONY: setup demo test lint bench
setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/tokenadapt demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) benchmarks/transplant_methods.py
