# The two commands a new user types are `make run` and `make test` (see README.md).
# Each builds the virtualenv from the pinned lock file on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.test-installed
# moto's standalone server, the mock S3 of the artifact store's tests, in a virtualenv of its
# own: its boto3/botocore pin python-dateutil<3, which kubernetes 37 in $(VENV) cannot share.
S3MOCK      := .venv-s3mock
S3MOCKSTAMP := $(S3MOCK)/.installed

.PHONY: run test lint typecheck layers unit bench clean system-deps

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

system-deps:
	@scripts/system-deps.sh

# The tests use real parts: system packages first, then the TPM binding that builds against them.
$(TESTSTAMP): $(STAMP) requirements-test.lock scripts/system-deps.sh
	@scripts/system-deps.sh
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-test.lock
	@touch $(TESTSTAMP)

$(S3MOCKSTAMP): requirements-s3mock.lock
	@test -x $(S3MOCK)/bin/python || $(PYTHON) -m venv $(S3MOCK)
	@$(S3MOCK)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-s3mock.lock
	@touch $(S3MOCKSTAMP)

## Start the control plane on the embedded SQLite store (data in ~/.local/share/fleetplane)
## plus a simulated fleet of $(SITES) sites onboarded through the zero-touch path.
SITES ?= 300
run: $(STAMP)
	@$(BIN)/fleetplane demo --sites $(SITES)

## Everything CI runs: lint, types, the layer contract, then the whole test suite.
test: $(TESTSTAMP) $(S3MOCKSTAMP) lint typecheck layers unit

lint: $(STAMP)
	@$(BIN)/ruff check src tests bench
	@$(BIN)/ruff format --check src tests bench >/dev/null || { echo "ruff format: run '$(BIN)/ruff format src tests bench'"; exit 1; }

typecheck: $(STAMP)
	@$(BIN)/mypy

layers: $(STAMP)
	@$(BIN)/lint-imports

unit: $(STAMP)
	@scripts/pytest.sh

bench: $(TESTSTAMP)
	@$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(S3MOCK) .mypy_cache .ruff_cache .pytest_cache
