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
	$(RUN) jobwire dev --example examples/workflow_printer.py --example examples/caseapp_sample.py

.PHONY: test
test: install ## run the whole test suite (unit + integration on real servers); PYTEST_ARGS narrows it
	@bash .ci/system-packages test
	$(RUN) pytest $(PYTEST_ARGS)

.PHONY: fuzz
fuzz: install ## the admin API fuzz test, long profile (~15 min; JOBWIRE_FUZZ_SEED=N repeats a run)
	JOBWIRE_FUZZ_PROFILE=fuzz $(RUN) pytest services/scheduler/tests/fuzz --runxfail $(PYTEST_ARGS)

.PHONY: chaos-mailer
chaos-mailer: install ## the mailer's chaos test, full profile: 2,000 emails, 6 SIGKILLs of `jobwire mailer` replicas (CI runs 300 / 2)
	JOBWIRE_CHAOS_PROFILE=full $(RUN) pytest services/mailer/tests/integration/test_mail_chaos.py -s $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff lint and format check
	$(RUN) ruff check .
	$(RUN) ruff format --check .

.PHONY: typecheck
typecheck: install ## mypy (strict on libs/)
	$(RUN) mypy libs/contracts/src libs/runtime/src libs/cli/src libs/testing/src services/scheduler/src services/listeners/src services/mailer/src services/search-sync/src examples/caseapp/src

.PHONY: contracts
contracts: install ## regenerate JSON Schema + AsyncAPI into libs/contracts/schemas
	$(RUN) python -m jobwire.contracts.export

.PHONY: contracts-check
contracts-check: install ## fail when the committed schemas differ from a fresh export
	$(RUN) python -m jobwire.contracts.export --check

.PHONY: openapi
openapi: install ## regenerate the admin API's OpenAPI document → services/scheduler/openapi.json
	$(RUN) python -m jobwire.scheduler.api.openapi

.PHONY: openapi-check
openapi-check: install ## fail when the committed OpenAPI document differs from a fresh export
	$(RUN) python -m jobwire.scheduler.api.openapi --check

.PHONY: bench-api
bench-api: install ## admin API benchmark (list p99, sustained trigger rate, fire lag under an API flood) → bench/results/api.json
	$(RUN) python bench/api.py --out bench/results/api.json
	$(RUN) python bench/api_flood.py --out bench/results/api.json
	$(RUN) python bench/api_flood.py --split --out bench/results/api.json

.PHONY: bench-listeners
bench-listeners: install ## listener benchmarks (Kafka vs bare loop, 10k files, Service Bus peer, IMAP) → bench/results/listeners.json
	$(RUN) python bench/listeners.py --out bench/results/listeners.json
	$(RUN) python bench/listeners_servicebus.py --out bench/results/listeners.json
	$(RUN) python bench/listeners_imap.py --out bench/results/listeners.json

.PHONY: bench-mailer
bench-mailer: install ## mailer benchmark (10k emails, 1 in 10 with 100 KB attached, vs a bare aiosmtplib loop) → bench/results/mailer.json
	$(RUN) python bench/mailer.py --out bench/results/mailer.json

.PHONY: bench-search
bench-search: install ## search sync benchmark (500k-case full load vs a bare bulk loop; committed → searchable at 500 changes/s) → bench/results/search.json; SEARCH_ARGS=--quick for the small profile
	$(RUN) python bench/search.py $(SEARCH_ARGS) --out bench/results/search.json

.PHONY: bench
bench: install bench-scheduler bench-api bench-listeners bench-mailer bench-search ## every benchmark → bench/results/*.json
	$(RUN) python bench/kit_publish.py --out bench/results/kit.json

# The bench group goes into an environment of its own (git-ignored): `make install`
# syncs .venv without it and must not remove packages from under a running benchmark.
.PHONY: bench-scheduler
bench-scheduler: install ## scheduler benchmark (burst vs APScheduler 4, sustained, replicas) → bench/results/scheduler.json
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/.jobwire/bench-venv $(UV) sync --frozen --all-packages --group bench
	UV_PROJECT_ENVIRONMENT=$(CURDIR)/.jobwire/bench-venv $(RUN) --all-packages --group bench \
		python bench/scheduler.py --out bench/results/scheduler.json

.PHONY: check
check: lint typecheck contracts-check openapi-check test ## the checks CI runs (it also runs the tests on servers the harness starts)
