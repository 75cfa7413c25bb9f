#!/usr/bin/env bash
# make fuzz / make fuzz-smoke: every cargo-fuzz target (fuzz/fuzz_targets) for SECONDS
# each (default 60), starting from fuzz/corpus/TARGET, then one line per target with the
# executions and the coverage reached. A crash stops with the input that caused it
# (fuzz/artifacts/TARGET/); make it a regression test.
#
# Uses the nightly toolchain (AddressSanitizer) when rustup has one; otherwise stable
# with RUSTC_BOOTSTRAP=1 and no sanitizer (libFuzzer's coverage guidance works alike).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-60}
TARGETS=(request_decoder binary_stream http_parser journal_record)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  FUZZ=(cargo +nightly fuzz); SANITIZER=()
else
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz); SANITIZER=(-s none)
fi

mkdir -p target
if ! "${FUZZ[@]}" build -O "${SANITIZER[@]}" > target/fuzz-build.log 2>&1; then
  cat target/fuzz-build.log >&2
  exit 1
fi
for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target"
  log="target/fuzz-$target.log"
  if ! "${FUZZ[@]}" run -O "${SANITIZER[@]}" "$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target found a failing input (fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  corpus=$(ls "corpus/$target" | wc -l)
  echo "fuzz: $target: ${runs:-?} runs in ${SECONDS_EACH}s, $cov edges, corpus $corpus inputs"
done
