# Two commands: `make run` starts the daemon on the embedded defaults, `make test` passes the tests.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run stop test test-scaleout lint bench bench-peers venv system-deps clean

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
	$(BIN)/lint-imports

test: $(STAMP) system-deps lint
	DIGITORN_DATA_DIR=$$(mktemp -d) $(BIN)/pytest -q -m "not scaleout"

# The end-to-end suite again on throwaway PostgreSQL + Redis (installed from Debian packages when
# missing), 2 ASGI and 2 Celery worker processes per daemon, plus the database-restart fault test.
# First the in-process tests marked scaleout (fastsql's parity with the ORM) on that PostgreSQL.
test-scaleout: $(STAMP) system-deps
	@set -euo pipefail; dir=$$(mktemp -d); chmod 755 "$$dir"; \
	  trap 'scripts/scaleout_services.sh stop "$$dir/s"' EXIT; \
	  eval "$$(scripts/scaleout_services.sh start "$$dir/s")"; \
	  DIGITORN_DATA_DIR=$$(mktemp -d) $(BIN)/pytest -q -m "scaleout and not e2e" tests/test_sql_parity.py; \
	  DIGITORN_TEST_CELERY_WORKERS=2 DIGITORN_TEST_DB_RESTART="scripts/scaleout_services.sh restart-pg $$dir/s" \
	  DIGITORN_DATA_DIR=$$(mktemp -d) $(BIN)/pytest -q -m e2e tests/e2e

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Side by side with Agno AgentOS on the peers benchmark (its README: the same client and turn, one
# real tool call and one answer), run back to back, then summarized. setup.sh makes its venvs once
# (~3 min). PEERS_BENCH points at the benchmark, PEERS_OUT at where results go.
PEERS_BENCH ?= $(firstword $(wildcard ../shared/peers-bench /work/shared/peers-bench))
bench-peers: $(STAMP)
	@test -x "$(PEERS_BENCH)/run_peer.sh" || { echo "peers-bench not found; set PEERS_BENCH=<dir>"; exit 1; }
	"$(PEERS_BENCH)/setup.sh"
	@set -e; out=$${PEERS_OUT:-/tmp/peers-bench/results}; export PEERS_OUT=$$out DIGITORN_VENV=$(abspath $(VENV)); \
	  "$(PEERS_BENCH)/run_peer.sh" agno --phases latency,throughput; \
	  "$(PEERS_BENCH)/run_peer.sh" digitorn --phases latency,throughput,idle --idle-n 200,1000; \
	  "$(PEERS_BENCH)/run_peer.sh" digitorn-w2 --phases latency,throughput; \
	  echo; echo "peers-bench, $$(date -u +%Y-%m-%d), load average $$(cut -d' ' -f1-3 /proc/loadavg):"; \
	  python3 "$(PEERS_BENCH)/summarize.py" $$out/agno.json $$out/digitorn.json $$out/digitorn-w2.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
