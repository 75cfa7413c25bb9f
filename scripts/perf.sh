#!/usr/bin/env bash
# make perf: profile ticketd under the throughput scenario and draw a flamegraph.
#
# ticketd runs pinned to core $SERVER_CORE, loadgen to core $LOAD_CORE (taskset).
# perf samples ticketd only (-e cpu-clock: hardware counters are not available on
# these VMs) with frame-pointer call graphs, from a build with frame pointers forced
# on, kept in its own target directory. Output: target/perf/{perf.data,stacks.folded,
# flamegraph.svg} and a text top-list.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CORE=${SERVER_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}
SECONDS_TO_RECORD=${PERF_SECONDS:-5}
OP=${PERF_OP:-buy}
OUT=target/perf
BUILD=target/perf-build
PORT=17879
mkdir -p "$OUT"

./scripts/install-deps.sh perf
if ! command -v inferno-flamegraph >/dev/null 2>&1; then
  export PATH="$HOME/.cargo/bin:$PATH"
  command -v inferno-flamegraph >/dev/null 2>&1 || cargo install inferno --locked
fi
RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR=$BUILD \
  cargo build --release --workspace --quiet

taskset -c "$SERVER_CORE" "$BUILD/release/ticketd" --shards 1 --listen 127.0.0.1:$PORT \
  --data-dir "$(mktemp -d)" \
  --event 1:1000000000000 > "$OUT/ticketd.out" 2> "$OUT/ticketd.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "ticketd started" "$OUT/ticketd.log" && break; sleep 0.05; done

taskset -c "$LOAD_CORE" "$BUILD/release/loadgen" --addr 127.0.0.1:$PORT --threads 1 \
  --conns 64 --depth 64 --op "$OP" --duration "$((SECONDS_TO_RECORD + 2))s" \
  --max-tracked-orders 0 > "$OUT/loadgen.txt" &
LOAD=$!
sleep 1
perf record -e cpu-clock -F 999 -g -p "$SERVER" -o "$OUT/perf.data" -- sleep "$SECONDS_TO_RECORD" 2> "$OUT/perf-record.log"
wait $LOAD || true
grep -E "throughput" "$OUT/loadgen.txt"

perf script -i "$OUT/perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/stacks.folded"
inferno-flamegraph --title "ticketd, throughput scenario ($OP, 64 conns x depth 64)" \
  < "$OUT/stacks.folded" > "$OUT/flamegraph.svg"
perf report -i "$OUT/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null \
  | grep -E "^ +[0-9]" > "$OUT/top.txt" || true
perf report -i "$OUT/perf.data" --children --percent-limit 5 --stdio 2>/dev/null \
  | grep -E "^ +[0-9]" > "$OUT/inclusive.txt" || true
echo "flamegraph: $OUT/flamegraph.svg"
echo "hottest functions (self time):"
head -15 "$OUT/top.txt"
