# `make app` and `make test` work on a fresh clone: they create the environment first when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
# Two pytest-xdist workers, one per core; a test file stays on one worker (its module fixtures are made once).
PYTEST_WORKERS ?= -n 2 --dist loadfile
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

.PHONY: app test test-fast bench clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

app: $(STAMP)
	$(VENV)/bin/streamlit run app.py --server.address 127.0.0.1

# The whole suite, including the real-data tests (../shared/data) and the headless-browser test, after the lint
# (ruff) and layer (import-linter: views -> ui -> core) gates configured in pyproject.toml.
test: $(STAMP)
	bash tools/ensure-chromium.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_WORKERS)

test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_WORKERS) -m "not slow and not browser"

bench: $(STAMP)
	for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf .cache runs test-artifacts .pytest_cache
