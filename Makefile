# jobwire — every target a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
UV ?= uv
RUN := $(UV) run --frozen

.DEFAULT_GOAL := help

.PHONY: help
help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: install
install: ## install system packages (if missing) and the workspace into .venv
	@bash .ci/system-packages
	$(UV) sync --frozen --all-packages

.PHONY: run
run: install ## start the whole system locally (embedded NATS + PostgreSQL); Ctrl-C stops it
	$(RUN) jobwire dev --example examples/workflow_printer.py

.PHONY: test
test: install ## run the whole test suite (unit + integration on real servers)
	$(RUN) pytest

.PHONY: lint
lint: install ## ruff lint and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

.PHONY: typecheck
typecheck: install ## mypy (strict on libs/)
	$(RUN) mypy libs/contracts/src libs/runtime/src libs/cli/src libs/testing/src services/scheduler/src

.PHONY: contracts
contracts: install ## regenerate JSON Schema + AsyncAPI into libs/contracts/schemas
	$(RUN) python -m jobwire.contracts.export

.PHONY: contracts-check
contracts-check: install ## fail when the committed schemas differ from a fresh export
	$(RUN) python -m jobwire.contracts.export --check

.PHONY: bench
bench: install ## kit publish benchmark → bench/results/kit.json
	$(RUN) python bench/kit_publish.py --out bench/results/kit.json

.PHONY: check
check: lint typecheck contracts-check test ## what CI runs
