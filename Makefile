# One task runner for everything: `make demo` and `make test` are all a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_DB ?= scope.db

.PHONY: setup setup-test host host-test venv demo test lint unit bench clean sanitize vendor-js

setup: host venv
setup-test: host-test venv

host:
	@PYTHON=$(PYTHON) scripts/host-setup.sh

host-test:
	@PYTHON=$(PYTHON) scripts/host-setup.sh --test

venv: $(INSTALLED)
	@$(PY) -m recorder.hostenv link-bcc

# pip's output goes to a log that is shown only when the install fails. It also compiles the
# C modules (the append path, the fold's and the table's loops), so a change to their source
# reinstalls.
$(INSTALLED): pyproject.toml eventlog/_native.c eventlog/_scan.c bpf/tcp_events.h
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --disable-pip-version-check -e '.[dev]' > $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; exit 1; }
	@touch $@

demo: setup
	@$(PY) -m recorder.demo --db $(DEMO_DB) --svg scope-demo-processes.svg

lint: venv
	@$(PY) -m ruff check bpf eventlog recorder replay migrations tests bench
	@$(PY) -m ruff format --check -q bpf eventlog recorder replay migrations tests bench
	@$(PY) -m mypy
	@scripts/vendor-js.sh --check

# The page's JavaScript (scope-replay serve), copied again from npm at the versions of
# web/package-lock.json and checked against replay/serve/static/vendor/SHA256SUMS.
vendor-js:
	@scripts/vendor-js.sh

# The C modules' own tests once more under Python's debug allocator, which turns a freed,
# overrun or mismatched block into an abort where a plain run may pass on corrupted memory.
NATIVE_DEBUG_TESTS := tests/unit/log/test_native_append.py tests/unit/log/test_scan.py

test: setup-test lint
	@$(PY) -m pytest $(PYTEST_ARGS)
	@PYTHONMALLOC=debug $(PY) -X dev -m pytest -q -p no:cacheprovider $(NATIVE_DEBUG_TESTS)
	@PY=$(PY) scripts/sanitize.sh

# The C modules built with ASan and UBSan, and their tests run against them.
sanitize: venv
	@PY=$(PY) scripts/sanitize.sh

unit: venv
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# The benchmarks, shortest first; bench/soak.py (ten minutes of kill -9) runs last.
BENCHES := log_write owners capture query replay restart serve retention fleet soak

bench: setup
	@for b in $(BENCHES); do echo "== bench/$$b.py"; $(PY) -m bench.$$b || exit 1; done

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache $(DEMO_DB) $(DEMO_DB)-wal $(DEMO_DB)-shm
