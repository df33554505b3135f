# reefmap — two commands do all set-up on a fresh machine:
#   make demo   creates .venv if needed, then maps a synthetic reef world on a LocalCluster into ./out/demo
#   make test   the same environment, then the full test suite (starts a local SLURM first when it can)
#   make notebook   the same environment plus JupyterLab (the "notebook" extra), then cluster/launch.ipynb in it
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reefmap-installed
NOTEBOOK_STAMP := $(VENV)/.reefmap-notebook-installed
JUPYTER_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv demo notebook test test-fast bench lock slurm-up slurm-down clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/reefmap demo

$(NOTEBOOK_STAMP): $(STAMP) requirements-notebook.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q -c requirements.lock -r requirements-notebook.lock -e ".[notebook]"
	@touch $@

# JupyterLab on the launch notebook; JUPYTER_ARGS="--no-browser --port 8888" on a login node (then ssh -L 8888:...)
notebook: $(NOTEBOOK_STAMP)
	$(BIN)/jupyter lab $(JUPYTER_ARGS) cluster/launch.ipynb

# SLURM-marked tests skip (with the reason) when start.sh cannot bring a cluster up (not root, no packages).
test: $(STAMP)
	-@bash cluster/local-slurm/start.sh
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow and not slurm" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

slurm-up:
	bash cluster/local-slurm/start.sh

slurm-down:
	bash cluster/local-slurm/stop.sh

# Re-pin the whole tested set after changing pyproject.toml (torch stays the CPU-wheel pin).
lock: $(STAMP)
	{ echo "# Exact package set for reefmap (pip freeze of a tested install; Python 3.11)."; \
	  echo "# Regenerate: make lock.  environment.yml installs this same file."; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) out .pytest_cache
