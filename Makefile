# feedstream: `make run` starts a local pipeline, `make test` passes the suite (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SRC    := pipeline tests scripts

.PHONY: venv lint format test unit run bench schemas broker-start broker-stop broker-reset clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

test: lint
	$(BIN)/python -m pytest -ra

unit: venv
	$(BIN)/python -m pytest -ra tests/unit

run: venv
	$(BIN)/python -m pipeline.run

bench: venv
	$(BIN)/python -m scripts.bench

schemas: venv
	$(BIN)/python -m pipeline.schemas write

broker-start:
	bash deploy/kafka/broker.sh start

broker-stop:
	bash deploy/kafka/broker.sh stop

broker-reset:
	bash deploy/kafka/broker.sh reset

clean:
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache
