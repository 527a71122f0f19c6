# The two commands of the README, and what they need.
#   make demo   run the job on the embedded stack over the bundled sample and print a summary
#   make test   run the whole test suite (starts its own broker, PostgreSQL and Redis)

PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# Debian tools the tests drive, installed as root when missing (one apt-get update):
	@# headless Chromium for the inbox page's browser test, and promtool (Debian's prometheus)
	@# for `promtool check metrics` on the job's metrics page and `promtool test rules`.
	@if [ "$$(id -u)" = 0 ]; then \
		missing=""; \
		{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || missing="chromium chromium-driver"; \
		[ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
		if [ -n "$$missing" ]; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -qq && apt-get install -y -qq $$missing; \
		fi; \
	fi
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/smart-alerts demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/api.py
	$(BIN)/python bench/archive.py
	$(BIN)/python bench/consolidation.py
	$(BIN)/python bench/delivery.py
	$(BIN)/python bench/evaluate.py
	$(BIN)/python bench/evaluate.py --flow
	$(BIN)/python bench/greeks.py
	$(BIN)/python bench/live.py
	$(BIN)/python bench/rule_text.py
	$(BIN)/python bench/startup.py

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy pipeline connectors sinks api

clean:
	rm -rf $(VENV) .state .pytest_cache
