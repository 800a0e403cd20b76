#!/usr/bin/env bash
# The full load soak (test plan case 18): two accounts each holding
# FLOWS flows for SECS seconds, an echo on every flow every 10 s, RSS and
# fd counts printed over time. As root.
#   scripts/soak.sh                 # 10,000 flows for 30 minutes
#   scripts/soak.sh 5000 600
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export NSP_TEST_LOAD_FLOWS="${1:-10000}" NSP_TEST_LOAD_SECS="${2:-1800}"
ulimit -n "$(ulimit -Hn)"
exec cargo test --release --test load two_accounts_hold_many_flows -- --nocapture
