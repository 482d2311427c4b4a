# Two commands: `make run` starts the daemon on the embedded defaults, `make test` passes the tests.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run stop test lint bench venv system-deps clean

$(STAMP): requirements.txt pyproject.toml
	@PY=$$(scripts/find_python.sh) || exit 1; \
	  if [ ! -x $(BIN)/python ]; then echo "Creating $(VENV) with $$PY"; "$$PY" -m venv $(VENV); fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/digitorn start

stop: $(STAMP)
	$(BIN)/digitorn stop

# Debian packages the browser test needs (headless Chromium + driver); skipped when present.
system-deps:
	@scripts/system_deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) system-deps lint
	DIGITORN_DATA_DIR=$$(mktemp -d) $(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
