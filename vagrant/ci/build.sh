#!/usr/bin/env bash
# Builds on the host what the VM stage hands in: nsproxy (release) and the
# end-to-end test executables of NSP_VM_TESTS (release), and writes the
# executables' paths, one per line, to LIST. run.sh calls it; the test
# suite (scripts/test.sh) calls it earlier, in the background at the
# lowest priority while the host's end-to-end tests run, so that here it
# finds everything built.
#   vagrant/ci/build.sh LIST
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
# Under software emulation everything is several times slower: the
# default is the core of the end-to-end suite (the data path, the proxy
# faults, the leak probes: about 10 minutes under TCG), which keeps CI
# within its budget; NSP_VM_TESTS="lifecycle pool ..." runs others.
TESTS=${NSP_VM_TESTS:-dataplane proxy_faults leaks}
list=${1:?usage: vagrant/ci/build.sh LIST}
cd "$REPO"
cargo build --release --locked --quiet
targs=()
for t in $TESTS; do targs+=(--test "$t"); done
cargo test --release --locked --no-run --message-format=json "${targs[@]}" 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' >"$list"
[ "$(wc -l <"$list")" -eq "$(wc -w <<<"$TESTS")" ] \
  || { echo "expected one executable per test in: $TESTS" >&2; cat "$list" >&2; exit 1; }
