# The two commands a newcomer needs (see README.md):
#   make demo   bring up the local stack and run the live pipeline on a sample order workload
#   make test   bring up the local stack and run the whole test suite
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test stack build lint bench clean-stack

stack:
	scripts/stack up

build:
	$(CARGO) build --workspace --all-targets

demo: stack
	$(CARGO) build --release -p cdcsync
	scripts/demo

# The end-to-end benchmark, cdcsync next to Debezium (~15 min; not part of `make test`).
bench: stack
	$(CARGO) build --release -p cdcsync
	scripts/bench

test: stack build
	eval "$$(scripts/stack env)" && $(CARGO) test --workspace --no-fail-fast
	@if [ -x scripts/ops-test ]; then scripts/ops-test; fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean-stack:
	scripts/stack reset
