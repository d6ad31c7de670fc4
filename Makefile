# The README's two commands are `make demo` and `make test`; both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow lint format bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements-ci.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-ci.txt
	$(PIP) install -q -c requirements-ci.txt -e ".[test,cluster]"
	# Peers for cross-checks and benchmarks. The constraint keeps pip on the pinned torch
	# (backpack pulls torchvision, which would otherwise bring a multi-GB CUDA torch).
	$(PIP) install -q -c requirements-ci.txt -e ".[peers]" || echo "peers not installed: their cross-checks will skip"
	touch $(STAMP)

demo: venv
	$(BIN)/curvlab demo

test: venv lint
	$(BIN)/python -m pytest -q -m "not slow" --doctest-modules src/curvlab tests

test-slow: venv
	$(BIN)/python -m pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: venv
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: venv
	$(BIN)/python benchmarks/bench_operators.py

clean:
	rm -rf $(VENV)
