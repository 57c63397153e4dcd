# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck demo clean

# torch is installed first, pinned (as in pyproject.toml and docker/Dockerfile), and from the
# CPU wheel index: from the default index, Linux gets the CUDA build, about 20 packages and
# gigabytes of libraries a CPU service never loads. The index is probed first (5 s at most),
# so that a machine that cannot reach it falls back at once to pip's own configuration (a
# local find-links or mirror that may hold the CPU wheel) instead of waiting out pip's
# timeouts on every package. TORCH_INDEX= (empty) skips the CPU index; point it at a mirror
# of the index with `make TORCH_INDEX=https://mirror.example/whl/cpu ...`.
TORCH_VERSION := 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@if $(BIN)/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("torch").split("+")[0] != sys.argv[1])' \
			"$(TORCH_VERSION)" 2>/dev/null; then \
		echo "torch $(TORCH_VERSION) is already installed"; \
	elif [ -n "$(TORCH_INDEX)" ] && $(BIN)/python -c \
			'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).close()' \
			"$(TORCH_INDEX)/torch/" 2>/dev/null; then \
		echo "installing torch $(TORCH_VERSION) (CPU build) from $(TORCH_INDEX)"; \
		$(BIN)/pip install --quiet --index-url "$(TORCH_INDEX)" "torch==$(TORCH_VERSION)"; \
	else \
		echo "$(or $(TORCH_INDEX),the CPU wheel index) is not reachable: installing torch $(TORCH_VERSION) from pip's own sources"; \
		echo "  (from the default index on Linux that is the CUDA build, gigabytes; see TORCH_INDEX in the Makefile)"; \
		$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/pip install --quiet -e ".[dev]" -e "./clients/python[pandas]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vigil migrate
	$(BIN)/vigil serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check app models tests benchmarks migrations clients
	$(BIN)/ruff format --check app models tests benchmarks migrations clients

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) vigil.db .pytest_cache

# A throw-away Vigil on SQLite plus the plant simulator: faults, alarms, feedback, retrains.
DEMO_PORT ?= 8765
DEMO_ARGS ?= --machines 4 --duration 3d --speed 1440

demo: $(STAMP)
	@set -eu; tmp=$$(mktemp -d); \
	key=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))'); \
	export VIGIL_DATABASE_URL="sqlite:///$$tmp/vigil.db" VIGIL_BOOTSTRAP_ADMIN_KEY="$$key" \
		VIGIL_API_KEY="$$key" VIGIL_LOG_FORMAT=text VIGIL_LOG_LEVEL=WARNING; \
	$(BIN)/vigil migrate > "$$tmp/migrate.log" 2>&1 || { cat "$$tmp/migrate.log"; exit 1; }; \
	$(BIN)/vigil serve --port $(DEMO_PORT) > "$$tmp/serve.log" 2>&1 & server=$$!; \
	trap 'status=$$?; kill $$server 2>/dev/null || true; wait $$server 2>/dev/null || true; rm -rf "$$tmp"; exit $$status' EXIT; \
	trap 'exit 130' INT TERM; \
	echo "Vigil on http://127.0.0.1:$(DEMO_PORT) (SQLite in $$tmp); simulating..."; \
	echo "Console: http://127.0.0.1:$(DEMO_PORT)/console  (sign in with the demo's admin key: $$key)"; \
	$(BIN)/vigil simulate --url http://127.0.0.1:$(DEMO_PORT) $(DEMO_ARGS) \
		|| { status=$$?; echo "--- vigil serve log (last lines) ---"; tail -n 20 "$$tmp/serve.log"; exit $$status; }
