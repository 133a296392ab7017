# featurizer: `make run` serves the embedded demo registry; `make test` runs the whole suite.
# Both set everything up from scratch on a fresh machine (a venv in .venv, Debian packages for tests).

VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
# The torch pair this machine kind installs from local disk (a CUDA build that also runs on CPU).
TORCH     ?= torch==2.14.1 torchvision==0.29.1
APT_DEPS  := prometheus dataset-fashion-mnist docker-compose
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: help install system-deps node-deps run lint test test-fast bench bench-quick soak protos clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ./client
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv with torch, the service, the client and test tools

system-deps: ## Debian packages the tests use (prometheus, Fashion-MNIST, docker-compose, node)
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_DEPS)
	command -v npm >/dev/null || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
	# kubectl (with kustomize v5) ships in this machine image from the cloud-sdk apt repository.
	command -v kubectl >/dev/null || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q kubectl

run: install ## serve the embedded demo registry on 0.0.0.0:50051 (metrics on :9090)
	$(VENV)/bin/featurizer serve --host 0.0.0.0 --port 50051 --metrics-port 9090

node-deps: ## npm packages of the cross-language client test (tests/node)
	[ ! -f tests/node/package.json ] || (cd tests/node && npm install --no-audit --no-fund --loglevel=error)

lint: install ## ruff (pyflakes, bugbear, complexity) and mypy on service/ and client/
	$(VENV)/bin/ruff check service client
	$(VENV)/bin/mypy

test: system-deps install node-deps lint ## set up, lint, type-check and run the whole suite (what CI runs)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: install lint ## the suite without re-installing Debian packages
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: install ## the benchmark: interleaved rounds, writes docs/performance.md + bench/results/
	$(PIP) install -q -e ".[bench]"
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: install ## a few seconds of every benchmark stage (smoke)
	$(PIP) install -q -e ".[bench]"
	$(PY) bench/run.py --quick $(BENCH_ARGS)

soak: install ## 64 clients mixing good/bad/cancelled calls (SOAK_SECONDS=60); prints figures
	$(PY) bench/soak.py --seconds $${SOAK_SECONDS:-60}

protos: install ## regenerate the stubs in client/featurizer_client/v1 and v2 from protos/
	$(PY) protos/generate.py
	$(PY) protos/generate_v2.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info client/*.egg-info service/*.egg-info
