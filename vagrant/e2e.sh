#!/usr/bin/env bash
# The end-to-end suite inside the VM, as root:
#   vagrant ssh -c 'sudo ~/nsproxy/vagrant/e2e.sh'             # all of it
#   vagrant ssh -c 'sudo ~/nsproxy/vagrant/e2e.sh dataplane leaks'
# Builds with the toolchain provision.sh installed. CI instead hands in
# test executables built on the host (NSP_VM_TEST_BINS: a file naming one
# per line) and runs exactly those; any failure fails the script.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "error: the end-to-end tests need root: sudo $0 $*" >&2; exit 1; }
# As CI runs it: root, not a sudo caller (`nsproxy exec --user` from a
# sudo caller may only pick the caller).
unset SUDO_USER SUDO_UID SUDO_GID SUDO_COMMAND
echo "== end-to-end suite in $(uname -n): $(uname -r), $(nproc) CPUs, $(free -m | awk '/Mem:/{print $2}') MiB"
if [ -n "${NSP_VM_TEST_BINS:-}" ]; then
  failed=()
  while read -r t; do
    [ -n "$t" ] || continue
    echo "== $(basename "$t")"
    start=$(date +%s)
    if "$t" --nocapture; then status=ok; else status=FAILED; failed+=("$(basename "$t")"); fi
    echo "== $(basename "$t"): $status in $(( $(date +%s) - start )) s"
  done <"$NSP_VM_TEST_BINS"
  if [ "${#failed[@]}" -gt 0 ]; then echo "FAILED in the VM: ${failed[*]}" >&2; exit 1; fi
  echo "== every test binary passed in the VM"
  exit 0
fi
export CARGO_HOME=/home/vagrant/.cargo RUSTUP_HOME=/home/vagrant/.rustup PATH="/home/vagrant/.cargo/bin:$PATH"
cd "$SRC"
args=()
for t in "$@"; do args+=(--test "$t"); done
[ "${#args[@]}" -gt 0 ] || args=(--tests)
exec cargo test --release --locked "${args[@]}"
