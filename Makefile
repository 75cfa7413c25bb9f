# ticketd — common tasks. `make run` and `make test` are the two that matter.
CARGO ?= cargo
LISTEN ?= 127.0.0.1:7878
EVENT ?= 1:10000
DATA_DIR ?= ./data

.PHONY: run build release install test deps lint fmt bench bench-micro perf clean cluster cluster-down cluster-rush cluster-report fuzz fuzz-smoke

## Build in release mode and serve the demo sale: event 1, 10,000 tickets, journaled in
## $(DATA_DIR) (a second `make run` resumes the same sale; `rm -rf data` starts afresh).
run: release
	./target/release/ticketd --listen $(LISTEN) --event $(EVENT) --data-dir $(DATA_DIR)

release:
	$(CARGO) build --release --workspace

build:
	$(CARGO) build --workspace

## Install ticketd and loadgen in $(PREFIX)/bin, the systemd unit in
## $(SYSCONFDIR)/systemd/system and a first $(SYSCONFDIR)/ticketd/ticketd.toml (kept if
## present). DESTDIR stages it all elsewhere.
PREFIX ?= /usr/local
SYSCONFDIR ?= /etc
install: release
	./scripts/install.sh --prefix $(PREFIX) --sysconfdir $(SYSCONFDIR) $(if $(DESTDIR),--destdir $(DESTDIR))

## Install anything missing, then formatting, lints and every test.
test: deps lint
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	./scripts/fuzz.sh 5

## Coverage-guided fuzzing of the decoders, one connection's state machine and the HTTP
## parser (cargo-fuzz): FUZZ_SECONDS per target (default 60). `make test` runs 5 s each.
FUZZ_SECONDS ?= 60
fuzz:
	./scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke:
	./scripts/fuzz.sh 5

deps:
	./scripts/install-deps.sh redis cluster prometheus install

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## The flash-sale scenarios end to end, pinned, with the peers (about 10 min; BENCH_QUICK=1: about 1 min).
bench: deps
	./scripts/bench.sh

## Criterion micro-benchmarks only (codec, stock, pipelined dispatch).
bench-micro: deps
	$(CARGO) bench --workspace

## Profile ticketd under the throughput scenario: target/perf/flamegraph.svg.
perf: deps
	./scripts/perf.sh

## The whole topology on this machine: Redis (AOF always), four ledger-mode nodes with
## weights 1:2:3:4, nginx in front (stream and http upstreams). `make cluster-down` ends it.
cluster: release
	./scripts/install-deps.sh cluster
	./scripts/cluster.sh up

cluster-down:
	./scripts/cluster.sh down

## The 1,000,000-buyer rush through nginx's binary front, then the per-node view.
cluster-rush:
	./scripts/cluster.sh exec ./target/release/loadgen --addr $$(./scripts/cluster.sh front-addr) \
	  --shared-ledger --reconnect --conns 1000 --requests 1000000 --users 1000000
	./scripts/cluster.sh report

cluster-report:
	./scripts/cluster.sh report

clean:
	$(CARGO) clean
