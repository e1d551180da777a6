# Every list of packages is derived from the tree (scripts/packages); nothing here names a backend.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS ?= never
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := $(shell python3 -m pip install --quiet uv >&2 && command -v uv || echo "$$(python3 -m site --user-base)/bin/uv")
endif
PACKAGES := $(shell scripts/packages)
PKG ?=

.PHONY: install services test test-package lint typecheck build smoke bench demo clean help

help:  ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

install:  ## Install the whole workspace into .venv (every package, dev tools).
	$(UV) sync --locked --all-packages --all-groups

services:  ## Install the server binaries and emulators the tests start (only what is missing).
	.ci/install-services

test: services  ## Run every package's tests, each in its own environment, two packages at a time (TEST_JOBS=1: one), starting the servers they need.
	scripts/test-all

test-package: services  ## Run one package's tests: make test-package PKG=integrations/redis
	@test -n "$(PKG)" || { echo "usage: make test-package PKG=core"; exit 2; }
	scripts/test-package $(PKG) -q

lint: install  ## ruff, namespace rules, lock file, workflow validation (offline).
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	scripts/check-namespace
	scripts/check-shape
	$(UV) lock --check
	.venv/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	.venv/bin/zizmor --offline --min-severity low .github/workflows

typecheck: install  ## mypy --strict, once per package.
	@for pkg in $(PACKAGES); do \
	  for mod in $$(scripts/package-info $$pkg modules); do \
	    echo "mypy -p $$mod"; .venv/bin/mypy -p $$mod || exit 1; \
	  done; \
	done

build:  ## Build every wheel and sdist into dist/ (without workspace sources).
	rm -rf dist && $(UV) build --all-packages --no-sources --out-dir dist

smoke: build  ## Install the wheels into a throwaway venv (no index) and import each package; then one backend by name with the index reachable, proving ours wins.
	scripts/smoke dist

bench: install  ## Benchmark every backend beside its raw driver and LlamaIndex (BENCH_SCALE=0.01 for a quick run).
	.venv/bin/chat-store-bench $(BENCH_ARGS)

demo:  ## Write a conversation to a JSON file, then read it back in a second process.
	$(UV) run --locked --package llama-index-storage-chat-store-core python examples/quickstart.py write demo_chat_store.json
	$(UV) run --locked --package llama-index-storage-chat-store-core python examples/quickstart.py read demo_chat_store.json

clean:  ## Remove environments and build output.
	rm -rf .venv .venvs dist demo_chat_store.json
