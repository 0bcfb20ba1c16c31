# The two commands (see README): `make demo` runs the main job, `make test` runs every test.
# Both install what they need into .venv and node_modules first; only Python 3.11+, Node and
# make are assumed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# the test tooling, every extra included (make test)
STAMP  := $(VENV)/.installed-stamp
# syncd's core alone: what the demo needs (a local folder into a sqlite catalog)
DEMO_STAMP := $(VENV)/.demo-stamp
# cfn-lint and checkov pin libraries the test dependencies also use: they get their own venv
IAC    := .venv-iac
IAC_STAMP := $(IAC)/.installed-stamp
AZURITE := node_modules/.bin/azurite-blob
DEMO   := build/demo
DB     ?= $(DEMO)/syncd.db

.PHONY: demo test install clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(AZURITE): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

$(IAC_STAMP):
	$(PYTHON) -m venv $(IAC)
	$(IAC)/bin/python -m pip install --quiet --upgrade pip
	$(IAC)/bin/python -m pip install --quiet 'cfn-lint>=1.20' 'checkov>=3.2'
	touch $@

install: $(STAMP) $(AZURITE) $(IAC_STAMP)

## syncs a copy of the bundled sample folder (build/demo/sample-bucket, made once: change it and
## run make demo again to see the changes) into $(DB) and lists the resulting items; the
## working tree stays clean
demo: $(DEMO_STAMP)
	@[ -d $(DEMO)/sample-bucket ] || { mkdir -p $(DEMO) && cp -Rp examples/sample-bucket $(DEMO)/; }
	$(BIN)/syncd sync $(DEMO)/sample-bucket --dataset sample --db $(DB)
	$(BIN)/syncd items ls --dataset sample --db $(DB)

## ruff, then the whole pytest suite in two processes, a test file at a time each (each starts
## its own moto, fake-gcs-server, Azurite and PostgreSQL; lints infra/ with cfn-lint and
## checkov from .venv-iac)
test: $(STAMP) $(AZURITE) $(IAC_STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

## the dashboard's browser tests drive the distribution's Chromium: installed here when missing
## and we are root; otherwise say how (without it those tests skip, or fail when CI is set)
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "chromium is missing: install it (e.g. sudo apt-get install -y chromium) for the dashboard's browser tests (tests/test_web_*.py)"; \
	fi

clean:
	rm -rf $(VENV) $(IAC) node_modules .pytest_cache dist build
