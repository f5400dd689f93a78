# The two set-up commands of the README (`make demo`, `make test`) start here. Both create the
# project's virtualenv in .venv when it is missing or stale, with every dependency pinned by
# constraints.txt; the tests start their own redis-server and moto, so nothing else is needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/propensity demo

test: $(STAMP) lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-resolve the pinned set after changing pyproject.toml's dependencies.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check '.[dev]'
	.lock-venv/bin/pip freeze --exclude propensity > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .propensity .pytest_cache .ruff_cache
