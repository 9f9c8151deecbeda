# feedstream: `make run` starts a local pipeline, `make test` passes the suite (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SRC    := pipeline tests scripts examples

.PHONY: venv lint format test unit run bench store-bench soak schemas broker-start broker-stop broker-reset clean

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

# the local broker outlives the suite (the next run reuses it in seconds): say so, and how to stop it
test: lint
	@status=0; $(BIN)/python -m pytest -ra || status=$$?; \
	if bash deploy/kafka/broker.sh status 2>/dev/null; then \
	  echo "note: the local Kafka broker (127.0.0.1:$${LOCAL_KAFKA_PORT:-9092}) is still running; the next run reuses it. Stop it with: make broker-stop"; \
	fi; exit $$status

unit: venv
	$(BIN)/python -m pytest -ra tests/unit

run: venv
	$(BIN)/python -m pipeline.run

# e.g. make bench BENCH_ARGS="--seekers 1000000 --profile bench-results/profiles"
bench: venv
	$(BIN)/python -m scripts.bench $(BENCH_ARGS)
	$(BIN)/python -m scripts.store_bench

store-bench: venv
	$(BIN)/python -m scripts.store_bench --postgres

soak: venv
	$(BIN)/python -m scripts.soak

schemas: venv
	$(BIN)/python -m pipeline.wire.schemas write

broker-start:
	bash deploy/kafka/broker.sh start

broker-stop:
	bash deploy/kafka/broker.sh stop

broker-reset:
	bash deploy/kafka/broker.sh reset

clean:
	rm -rf $(VENV) .local .pytest_cache .mypy_cache .ruff_cache
