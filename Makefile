# sessionrec — every target creates/uses .venv; nothing needs installing by hand.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DB     ?= sqlite:///data/sessionrec.db
MODELS ?= models
HOST   ?= 127.0.0.1
PORT   ?= 50051

.PHONY: run test test-postgres lint proto bench demo clean venv

$(STAMP): pyproject.toml setup.py training/_kernels.pyx
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,postgresql]'
	touch $(STAMP)

venv: $(STAMP)

# Spark (pyspark, ~450 MB) for the Spark engine's tests; `make run` does not need it.
SPARK_STAMP := $(VENV)/.installed-spark
$(SPARK_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[spark]'
	touch $(SPARK_STAMP)

run: $(STAMP)
	$(VENV)/bin/sessionrec serve --db $(DB) --models $(MODELS) --host $(HOST) --port $(PORT)

test: $(STAMP) $(SPARK_STAMP)
	$(PY) -m pytest -q

# The same suite with every store on PostgreSQL (a private cluster the tests
# start from Debian's server binaries; .ci/run installs them when missing).
test-postgres: $(STAMP) $(SPARK_STAMP)
	SESSIONREC_TEST_STORE=postgresql $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy sessionrec service training

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
		protos/sessionrec/v1/sessionrec.proto

bench: $(STAMP)
	$(PY) -m bench.run

demo: $(STAMP)
	$(PY) examples/demo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f training/_kernels.cpp training/_kernels*.so
