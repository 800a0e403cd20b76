#!/usr/bin/env bash
# Writes scripts/code-order.txt, the order build.rs has the linker lay out
# the release binary's functions in (docs/performance.md, "Code laid out in
# the order it runs"). As root, with perf:
#   scripts/code-order.sh        # 4 passes
#   scripts/code-order.sh 2
# Each pass builds the release binary with the current file, runs both proxy
# benchmarks (tools and Python clients) and a 20-account run of the accounts
# benchmark under `perf record -a`, and takes from this binary's samples:
# the functions that ran, by number of samples, then those whose first
# touch faulted a page in. Names the file held and the binary still has
# are kept (after the sampled ones, before the new faults); names gone
# from the binary are dropped. A fault maps 64-128 KiB around the page
# touched, hiding the functions beside it until the code that ran is packed
# together: each pass finds more of them (7.9 -> 5.6 MiB peak over 7 passes
# on 2026-12-07; the later ones added fewer and fewer).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
passes="${1:-4}"
[ "$(id -u)" -eq 0 ] || { echo "code-order.sh: needs root (the benchmarks build namespaces)" >&2; exit 1; }
command -v perf >/dev/null || { echo "code-order.sh: needs perf (apt install linux-perf)" >&2; exit 1; }
out=scripts/code-order.txt
bin="$PWD/target/release/nsproxy"
work="$(mktemp -d /tmp/nsproxy-code-order.XXXXXX)"
perf_pids=()
cleanup() {
    for p in "${perf_pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
touch "$out"

for pass in $(seq 1 "$passes"); do
    # Release and bench builds name the same function with different hashes
    # (the profile is part of each crate's metadata): the file names both.
    cargo build --release --bin nsproxy --quiet
    cp "$bin" "$work/release-bin"
    cargo bench --no-run --bench proxy --bench accounts --quiet
    cp "$bin" "$work/bench-bin"
    perf record -a -e page-faults -c 1 -d -o "$work/faults.data" 2>/dev/null &
    perf_pids=($!)
    perf record -a -e cpu-clock -F 4000 -o "$work/cpu.data" 2>/dev/null &
    perf_pids+=($!)
    sleep 1
    for client in tools python; do
        cargo bench --quiet --bench proxy -- --client "$client" --rounds 1 --seconds 3 \
            --requests 500 --connections 300 --idle-flows 300 > "$work/bench-$client.log" 2>&1
    done
    cargo bench --quiet --bench accounts -- 20 > "$work/accounts.log" 2>&1
    kill -INT "${perf_pids[@]}"
    wait "${perf_pids[@]}" || true
    perf_pids=()
    # Functions of this binary that ran, most samples first.
    perf script -i "$work/cpu.data" --no-demangle -F ip,sym,dso 2>/dev/null \
        | awk -v b="($bin)" '$3 == b && $2 != "[unknown]" { print $2 }' \
        | sort | uniq -c | sort -rn | awk '{ print $2 }' > "$work/hot"
    # Code pages faulted in (the address is the instruction's), first first.
    perf script -i "$work/faults.data" --no-demangle -F addr,ip,sym,dso 2>/dev/null \
        | awk -v b="($bin)" '$1 == $4 && $3 == b && $2 != "[unknown]" { print $2 }' > "$work/faults"
    for b in bench release; do
        nm -S --defined-only "$work/$b-bin" | awk 'NF == 4 && $3 ~ /^[tTwW]$/ { print $2, $4 }' > "$work/$b-syms"
    done
    python3 - "$out" "$work" <<'PY'
import re, sys
out, work = sys.argv[1], sys.argv[2]
def key(name, size):
    # A legacy symbol's hash and a ThinLTO suffix differ between profiles.
    return re.sub(r"\.llvm\.\d+$", "", re.sub(r"17h[0-9a-f]{16}E", "", name)), size
def syms(which):
    return [(n, s) for s, n in (l.split() for l in open(f"{work}/{which}-syms"))]
bench = dict(syms("bench"))
release = {}
for n, s in syms("release"):
    release.setdefault(key(n, s), []).append(n)
lines = lambda f: [l.strip() for l in open(f) if l.strip() and not l.startswith("#")]
old = [n for n in lines(out) if n in bench]
names, seen = [], set()
for n in lines(f"{work}/hot") + old + lines(f"{work}/faults"):
    if n in seen or n not in bench:
        continue
    for m in [n] + release.get(key(n, bench[n]), []):
        if m not in seen:
            seen.add(m)
            names.append(m)
with open(out, "w") as f:
    f.write("# Written by scripts/code-order.sh, read by build.rs (LLD's --symbol-ordering-file):\n")
    f.write("# each function under the names a bench and a release build give it.\n")
    f.write("\n".join(names) + "\n")
PY
    peak=""
    for client in tools python; do
        peak+=" $client $(grep 'peak RSS during' "$work/bench-$client.log" | sed 's/.*: //')"
    done
    echo "pass $pass: $(grep -vc '^#' "$out") names; $(wc -l < "$work/hot") sampled, $(sort -u "$work/faults" | wc -l) faulted; peak RSS:$peak"
done
cargo build --release --bin nsproxy --quiet
