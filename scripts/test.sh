#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the root-only
# end-to-end tests (real namespaces, TUN devices and proxies).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
step() { echo "== [suite $((SECONDS / 60))m$((SECONDS % 60))s] $*"; }
root=1
if [ "$(id -u)" != 0 ]; then
  root=0
  echo "!!! not root: the end-to-end tests will be SKIPPED; run: sudo $0" >&2
else
  step "packages"
  ./scripts/install-deps.sh
fi
vm=1
if [ "$root" = 0 ]; then
  vm=0
  echo "!!! not root: the VM stage will be SKIPPED; run: sudo $0" >&2
elif [ "${NSP_TEST_VM:-1}" = 0 ]; then
  vm=0
  echo "!!! NSP_TEST_VM=0: the VM stage will be SKIPPED" >&2
fi
step "fmt, clippy"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# What is on the host before the benchmarks and tests: the same must be
# there after them (see the check after the tests).
[ "$root" = 0 ] || host_before=$(./scripts/host-state.sh)
# The benchmark's smoke run (1 round, 1 s) so it does not rot; figures in
# docs/performance.md come from `cargo bench --bench proxy`.
step "benchmark smoke runs"
cargo test --locked --bench proxy
# ... and with the outside clients: benches/client.py, and wrk/ab against
# nginx (baseline through proxychains4).
cargo test --locked --bench proxy -- --client python
cargo test --locked --bench proxy -- --client tools
# The many-accounts benchmark's small run (50 accounts up, idle, status,
# list, down); the 1,000-account figures come from `cargo bench --bench accounts`.
cargo test --locked --bench accounts
# Stopped half way (SIGINT during the tools' first figure, SIGTERM while
# the accounts come up), a benchmark leaves nothing behind.
cargo test --locked --bench proxy -- --client tools --interrupt-check
cargo test --locked --bench accounts -- --interrupt-check

# Most of the end-to-end tests' time is waiting (a silence held, a program's
# rounds, timeouts), so the builds of the later stages (the fuzz targets,
# the VM stage's release executables) run meanwhile in the background at
# the lowest CPU and I/O priority: the tests get the CPU whenever they want
# it. Each build's output goes to a log, shown if it fails.
logs=$(mktemp -d)
bg=()
# Each in a process group of its own (job control on while it starts, in
# the same session, so nice still ranks it below the tests), which the
# exit trap ends whole if the suite stops early.
trap 'for p in "${bg[@]}"; do kill -- "-$p" 2>/dev/null || true; done; rm -rf "$logs"' EXIT
background() {
  local name=$1
  shift
  set -m
  nice -n 19 ionice -c 3 "$@" >"$logs/$name.log" 2>&1 &
  set +m
  bg+=($!)
  echo "$name $!" >>"$logs/jobs"
}
background fuzz-build ./scripts/fuzz.sh build
[ "$vm" = 0 ] || background vm-build ./vagrant/ci/build.sh "$logs/vm-tests.list"
# Every test binary runs even after one failed, so a red run shows all
# that is wrong (the exit status is still the failure).
step "unit and end-to-end tests (meanwhile, in the background: the builds for fuzzing and the VM)"
cargo test --locked --no-fail-fast --lib --bins --tests
if [ "$root" = 1 ]; then
  step "nothing left on the host"
  host_after=$(./scripts/host-state.sh)
  if [ "$host_before" != "$host_after" ]; then
    diff <(echo "$host_before") <(echo "$host_after") >&2 || true
    echo "FAILED: the benchmarks and tests left the lines marked > above on the host" >&2
    exit 1
  fi
  echo "the host holds what it held before the benchmarks and tests ($(echo "$host_after" | wc -l) lines)"
fi
step "waiting for the background builds"
while read -r name pid; do
  if ! wait "$pid"; then
    tail -60 "$logs/$name.log"
    echo "FAILED: the background build $name (its log above)" >&2
    exit 1
  fi
done <"$logs/jobs"
bg=()
# Bad input: a short libFuzzer run of every fuzz target (packets, DNS,
# proxy replies, policies, control requests, service answers, check
# answers, the CNI plugin's configuration and environment), from the
# corpus kept in fuzz/corpus. Longer runs: scripts/fuzz.sh 600.
step "fuzzing, 20 s per target"
./scripts/fuzz.sh 20
# The VM stage: the Vagrant VM booted offline, the .deb and its systemd
# units tested inside it, and the core end-to-end tests run there.
if [ "$vm" = 1 ]; then
  step "the VM stage"
  ./vagrant/ci/run.sh
else
  echo "!!! the VM stage is SKIPPED (see above)" >&2
fi
step "done"
