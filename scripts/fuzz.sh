#!/usr/bin/env bash
# Coverage-guided fuzzing of movewatch's untrusted inputs on the stable
# toolchain (libFuzzer via libfuzzer-sys, with the same sanitizer-coverage
# flags cargo-fuzz passes, minus AddressSanitizer which needs nightly).
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   scripts/fuzz.sh decode_payload 600   # one target, 10 minutes
#
# With nightly and cargo-fuzz installed, `cd fuzz && cargo +nightly fuzz run
# decode_payload` does the same with AddressSanitizer. See docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(decode_payload tracks_body client_message)
if [[ $# -ge 1 && "$1" != "all" ]]; then TARGETS=("$1"); fi
SECONDS_PER_TARGET="${2:-60}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
FUZZ_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"

# --target keeps these flags off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --quiet --manifest-path fuzz/Cargo.toml \
  --target "$TRIPLE" --target-dir "$FUZZ_TARGET_DIR"

for t in "${TARGETS[@]}"; do
  work="$(mktemp -d)"
  artifacts="${FUZZ_ARTIFACTS:-fuzz/artifacts}/$t"
  mkdir -p "$artifacts"
  echo "fuzzing $t for ${SECONDS_PER_TARGET}s (seeds: fuzz/corpus/$t; crashes: $artifacts)"
  "$FUZZ_TARGET_DIR/$TRIPLE/release/$t" "$work" "fuzz/corpus/$t" \
    -max_total_time="$SECONDS_PER_TARGET" -max_len=300000 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 2>&1 \
    | grep -E '^(Done|#[0-9]+ +DONE)|stat::number_of_executed_units|ERROR|panicked|SUMMARY' || true
  # libFuzzer exits non-zero on a crash; check the artifacts as well.
  if compgen -G "$artifacts/crash-*" > /dev/null; then
    echo "fuzz target $t found a crash: $(ls "$artifacts"/crash-*)" >&2
    exit 1
  fi
  rm -rf "$work"
done
