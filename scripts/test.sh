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
cargo test --locked --lib --bins --tests
# Bad input: a short libFuzzer run of every fuzz target (packets, DNS,
# proxy replies, policies, control requests, service answers), from the
# corpus kept in fuzz/corpus. Longer runs: scripts/fuzz.sh 600.
./scripts/fuzz.sh 20
