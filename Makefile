# Two commands: `make run` starts the daemon on the embedded defaults, `make test` passes the tests.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run stop test test-scaleout lint bench venv system-deps clean

$(STAMP): requirements.txt pyproject.toml
	@PY=$$(scripts/find_python.sh) || exit 1; \
	  if [ ! -x $(BIN)/python ]; then echo "Creating $(VENV) with $$PY"; "$$PY" -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@scripts/system_deps.sh --runtime
	$(BIN)/digitorn start
	@data_dir=$${DIGITORN_DATA_DIR:-$$HOME/.digitorn}; \
	  key=$${DIGITORN_API_KEY:-$$(cat "$$data_dir/admin.key" 2>/dev/null)}; \
	  url=$$($(BIN)/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$$data_dir/daemon.json" 2>/dev/null || echo http://127.0.0.1:8000); \
	  echo; echo "Admin API key (also in $$data_dir/admin.key): $$key"; \
	  echo "Try:  curl -H 'Authorization: Bearer $$key' $$url/api/apps/"; \
	  echo "Stop: make stop   (or .venv/bin/digitorn stop)"

stop: $(STAMP)
	$(BIN)/digitorn stop

# Debian packages the browser test needs (headless Chromium + driver); skipped when present.
system-deps:
	@scripts/system_deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) system-deps lint
	DIGITORN_DATA_DIR=$$(mktemp -d) $(BIN)/pytest -q -m "not scaleout"

# The end-to-end suite again on throwaway PostgreSQL + Redis (installed from Debian packages when
# missing), 2 ASGI and 2 Celery worker processes per daemon, plus the database-restart fault test.
test-scaleout: $(STAMP) system-deps
	@set -euo pipefail; dir=$$(mktemp -d); chmod 755 "$$dir"; \
	  trap 'scripts/scaleout_services.sh stop "$$dir/s"' EXIT; \
	  eval "$$(scripts/scaleout_services.sh start "$$dir/s")"; \
	  DIGITORN_TEST_CELERY_WORKERS=2 DIGITORN_TEST_DB_RESTART="scripts/scaleout_services.sh restart-pg $$dir/s" \
	  DIGITORN_DATA_DIR=$$(mktemp -d) $(BIN)/pytest -q -m e2e tests/e2e

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
