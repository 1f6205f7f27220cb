# The two commands a newcomer types: `make demo` and `make test`. Everything else is a helper of those.
# Needs only python3 (3.11) and make; the virtualenv and pinned dependencies are created on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install when a requirements file changes (the stamp is older than it).
STAMP  := $(VENV)/.installed
# Development settings for everything make runs (config/settings.py fails closed without them).
export DJANGO_DEBUG ?= 1

.PHONY: demo test lint typecheck check pytest test-integration venv clean

# The example plug-in's pyproject.toml too: its entry points are read from the installed metadata.
$(STAMP): requirements.txt requirements-dev.txt plugins/fedfleet_example/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch==2.13.0 resolves to the CPU wheel this machine keeps on disk (PIP_FIND_LINKS); see README.
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# The layout's contracts (pyproject.toml): web -> analysis -> engine -> jobs, pure fl/agent, devices apart.
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

check: $(STAMP)
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck check pytest

# The integration and browser tests again, e.g. against PostgreSQL: DATABASE_URL=postgres://... make test-integration
test-integration: $(STAMP)
	$(BIN)/pytest -m "integration or browser" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
