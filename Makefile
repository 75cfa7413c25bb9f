# ticketd — common tasks. `make run` and `make test` are the two that matter.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:7878
EVENT ?= 1:10000
DATA_DIR ?= ./data

.PHONY: run build release test deps lint fmt bench bench-micro perf clean

## Build in release mode and serve the demo sale: event 1, 10,000 tickets, journaled in
## $(DATA_DIR) (a second `make run` resumes the same sale; `rm -rf data` starts afresh).
run: release
	./target/release/ticketd --listen $(LISTEN) --event $(EVENT) --data-dir $(DATA_DIR)

release:
	$(CARGO) build --release --workspace

build:
	$(CARGO) build --workspace

## Install anything missing, then formatting, lints and every test.
test: deps lint
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

deps:
	./scripts/install-deps.sh redis

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## The flash-sale scenarios end to end, pinned, with the peers (about 6 min; BENCH_QUICK=1: about 1 min).
bench: deps
	./scripts/bench.sh

## Criterion micro-benchmarks only (codec, stock, pipelined dispatch).
bench-micro: deps
	$(CARGO) bench --workspace

## Profile ticketd under the throughput scenario: target/perf/flamegraph.svg.
perf: deps
	./scripts/perf.sh

clean:
	$(CARGO) clean
