# Two set-up commands: `make test` and `make demo`. Each creates .venv and installs the project (CPU torch) on
# first use, and is a no-op install afterwards (the stamp tracks pyproject.toml).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch's OpenMP threads busy-wait by default, which slows everything several-fold on a shared 2-core machine.
export OMP_WAIT_POLICY := PASSIVE
export YOLO_OFFLINE := 1
export YOLO_VERBOSE := False
export YOLO_AUTOINSTALL := False
export YOLO_CONFIG_DIR := $(CURDIR)/.ultralytics

.PHONY: install test test-slow lint demo bench clean test-docker

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --progress-bar off torch==2.13.0
	$(BIN)/python -m pip install -qq --progress-bar off -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/spquant serve --host 127.0.0.1 --port 8000

bench: $(STAMP)
	$(BIN)/python benchmarks/events.py

test-docker: $(STAMP)
	bash docker/test_docker.sh

clean:
	rm -rf $(VENV) .ultralytics
