#!/usr/bin/env bash
# Fuzzes every target in fuzz/ with libFuzzer (cargo fuzz), starting from
# the corpus kept in fuzz/corpus/<target>. Prints each target's runs and
# coverage; fails on any crash (the input is left in fuzz/artifacts/).
#   scripts/fuzz.sh          # 20 s per target (what the test suite runs)
#   scripts/fuzz.sh 600      # 10 minutes per target
#   scripts/fuzz.sh 60 dns   # one target
#   scripts/fuzz.sh build    # only build the targets (the suite does this
#                            # in the background while the end-to-end tests run)
# Targets run side by side, one per core (FUZZ_JOBS to change it); each
# gets its full time.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
# cargo fuzz needs nightly flags (-Zsanitizer); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
# No AddressSanitizer: every target feeds safe Rust (parsers, the policy,
# the control protocol), where out-of-bounds access is already a panic,
# which libFuzzer catches as a crash, as it does overflow (debug
# assertions stay on). Without it the targets build in 4m55s instead of
# 7m17s here and run faster. The same flag on build and run: a run with
# other flags would rebuild.
flags=(--sanitizer none)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build "${flags[@]}"
[ "${1:-}" = build ] && exit 0
secs="${1:-20}"
targets="${2:-$(cargo fuzz list)}"
jobs="${FUZZ_JOBS:-$(nproc)}"
# New inputs go to a scratch copy: the kept corpus changes only on purpose
# (scripts/fuzz.sh N, then `cargo fuzz cmin <target>` and commit).
scratch="$(mktemp -d)"
trap 'kill $(jobs -rp) 2>/dev/null || true; rm -rf "$scratch"' EXIT
fuzz_one() {
  local t=$1
  mkdir -p "$scratch/$t"
  cp -r "corpus/$t/." "$scratch/$t/" 2>/dev/null || true
  set +e
  cargo fuzz run "${flags[@]}" "$t" "$scratch/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1
  echo $? >"$scratch/$t.rc"
}
for t in $targets; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  fuzz_one "$t" &
done
wait
# Reported in the targets' order, whatever order they finished in.
failed=0
for t in $targets; do
  log="$scratch/$t.log"
  if [ "$(cat "$scratch/$t.rc" 2>/dev/null)" != 0 ]; then
    tail -40 "$log"
    echo "FUZZ FAILURE in target $t: see fuzz/artifacts/$t/"
    failed=1
  else
    runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo '?')
    cov=$(grep -E 'DONE' "$log" | grep -oE 'cov: [0-9]+' | tail -1 || true)
    echo "fuzz $t: $runs executions in ${secs}s, $cov, corpus $(ls "corpus/$t" | wc -l) kept -> $(ls "$scratch/$t" | wc -l)"
  fi
done
exit "$failed"
