# The two commands (see README): `make demo` runs the main job, `make test` runs every test.
# Both install what they need into .venv and node_modules first; only Python 3.11+, Node and
# make are assumed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
AZURITE := node_modules/.bin/azurite-blob
DB     ?= syncd.db

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(AZURITE): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

install: $(STAMP) $(AZURITE)

## syncs the bundled sample folder into $(DB) and lists the resulting items
demo: $(STAMP)
	$(BIN)/syncd sync examples/sample-bucket --dataset sample --db $(DB)
	$(BIN)/syncd items ls --dataset sample --db $(DB)

## ruff, then the whole pytest suite (starts moto, fake-gcs-server and Azurite itself)
test: $(STAMP) $(AZURITE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) node_modules .pytest_cache $(DB) $(DB)-wal $(DB)-shm
