#!/usr/bin/env bash
# Fuzzes every target in fuzz/ with libFuzzer (cargo fuzz), starting from
# the corpus kept in fuzz/corpus/<target>. Prints each target's runs and
# coverage; fails on any crash (the input is left in fuzz/artifacts/).
#   scripts/fuzz.sh          # 20 s per target (what the test suite runs)
#   scripts/fuzz.sh 600      # 10 minutes per target
#   scripts/fuzz.sh 60 dns   # one target
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
# cargo fuzz needs nightly flags (-Zsanitizer); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
secs="${1:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets="${2:-$(cargo fuzz list)}"
cargo fuzz build
# New inputs go to a scratch copy: the kept corpus changes only on purpose
# (scripts/fuzz.sh N, then `cargo fuzz cmin <target>` and commit).
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  mkdir -p "$scratch/$t"
  cp -r "corpus/$t/." "$scratch/$t/" 2>/dev/null || true
  log="$scratch/$t.log"
  if ! cargo fuzz run "$t" "$scratch/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "FUZZ FAILURE in target $t: see fuzz/artifacts/$t/"
    exit 1
  fi
  runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo '?')
  cov=$(grep -E 'DONE' "$log" | grep -oE 'cov: [0-9]+' | tail -1 || true)
  echo "fuzz $t: $runs executions in ${secs}s, $cov, corpus $(ls "corpus/$t" | wc -l) kept -> $(ls "$scratch/$t" | wc -l)"
done
