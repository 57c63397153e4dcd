# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck demo clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned, so that nothing resolves to the CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vigil migrate
	$(BIN)/vigil serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check app models tests benchmarks migrations
	$(BIN)/ruff format --check app models tests benchmarks migrations

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
	$(BIN)/vigil simulate --url http://127.0.0.1:$(DEMO_PORT) $(DEMO_ARGS) \
		|| { status=$$?; echo "--- vigil serve log (last lines) ---"; tail -n 20 "$$tmp/serve.log"; exit $$status; }
