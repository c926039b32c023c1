# Set-up and everyday commands. `make run` and `make test` install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip finds torch 2.14.1 / torchvision 0.29.1 locally on the development machines; elsewhere
# it downloads the matching wheels.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
QUICKSTART := outputs/quickstart
# pytest-xdist workers for `make test` (one thread each): 2 suits the 2-core CI machine.
TEST_WORKERS ?= 2

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH) || $(BIN)/python -m pip install -q torch torchvision
	$(BIN)/python -m pip install -q -e ".[test,cluster,tracking]"
	touch $(STAMP)

# Quickstart: random vs margin sampling over 2 seeds on the synthetic dataset, then the plot.
run: install
	rm -rf $(QUICKSTART)
	$(BIN)/alseg run -m strategy=random,margin seed=0,1 hydra.sweep.dir=$(QUICKSTART)
	$(BIN)/alseg plot $(QUICKSTART) --out $(QUICKSTART)
	@echo "curves: $(QUICKSTART)/curves.png   table: $(QUICKSTART)/table.md"
	@cat $(QUICKSTART)/table.md

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

bench: install
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf outputs/quickstart outputs/runs outputs/multirun
