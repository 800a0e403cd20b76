#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the root-only
# end-to-end tests (real namespaces, TUN devices and proxies).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" != 0 ]; then
  echo "!!! not root: the end-to-end tests will be SKIPPED; run: sudo $0" >&2
else
  ./scripts/install-deps.sh
fi
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The benchmark's smoke run (1 round, 1 s) so it does not rot; figures in
# docs/performance.md come from `cargo bench --bench proxy`.
cargo test --locked --bench proxy
# ... and with the outside clients: benches/client.py, and wrk/ab against
# nginx (baseline through proxychains4).
cargo test --locked --bench proxy -- --client python
cargo test --locked --bench proxy -- --client tools
# The many-accounts benchmark's small run (50 accounts up, idle, status,
# list, down); the 1,000-account figures come from `cargo bench --bench accounts`.
cargo test --locked --bench accounts
# Every test binary runs even after one failed, so a red run shows all
# that is wrong (the exit status is still the failure).
cargo test --locked --no-fail-fast --lib --bins --tests
# Bad input: a short libFuzzer run of every fuzz target (packets, DNS,
# proxy replies, policies, control requests, service answers, check
# answers, the CNI plugin's configuration and environment), from the
# corpus kept in fuzz/corpus. Longer runs: scripts/fuzz.sh 600.
./scripts/fuzz.sh 20
# The VM stage: the Vagrant VM booted offline, the .deb and its systemd
# units tested inside it, and the core end-to-end tests run there.
if [ "$(id -u)" != 0 ]; then
  echo "!!! not root: the VM stage is SKIPPED; run: sudo $0" >&2
elif [ "${NSP_TEST_VM:-1}" = 0 ]; then
  echo "!!! NSP_TEST_VM=0: the VM stage is SKIPPED" >&2
else
  ./vagrant/ci/run.sh
fi
