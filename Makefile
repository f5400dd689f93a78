# The two set-up commands of the README (`make demo`, `make test`) start here. Both create the
# project's virtualenv in .venv when it is missing or stale, with every dependency pinned by
# constraints.txt; the tests start their own redis-server and moto, so nothing else is needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: demo test lint lock clean package

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/propensity demo

# checkov pins an older boto3 than the project: it gets a virtualenv of its own.
$(CHECKOV_STAMP): constraints-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --disable-pip-version-check -c constraints-checkov.txt checkov
	touch $@

test: $(STAMP) $(CHECKOV_STAMP) lint
	$(BIN)/pytest -q

# The deployable artefacts in dist/: the wheel, and in dist/emr what the EMR bootstrap and
# steps read from the artifacts bucket (aws s3 sync dist/emr <terraform output artifacts_uri>).
# Images: docker build -f Dockerfile.scorer -t <ecr repository>:<tag> .
package: $(STAMP)
	rm -rf dist && mkdir -p dist/emr
	$(BIN)/pip wheel -q --disable-pip-version-check --no-deps -w dist/emr .
	cp constraints.txt deploy/emr/bootstrap.sh deploy/emr/run-step.sh dist/emr/
	cp dist/emr/propensity-*.whl dist/
	@ls -1 dist dist/emr

lint: $(STAMP)
	$(BIN)/ruff check .

# Re-resolve the pinned set after changing pyproject.toml's dependencies.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check '.[dev]'
	.lock-venv/bin/pip freeze --exclude propensity > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .propensity .pytest_cache .ruff_cache dist
