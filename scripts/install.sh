#!/usr/bin/env bash
# Installs nsproxy on this host, as an operator would on a trading host:
#   sudo ./scripts/install.sh                # build, then install under /usr/local
# It installs only what nsproxy needs (ca-certificates for https checks; gcc
# and libc6-dev to build), no test proxies and nothing that starts a
# service; checks rustc against Cargo.toml's rust-version; builds the
# release binary; installs it with nsproxy@.service, the manual pages and
# the shell completions; creates /etc/nsproxy/policies and
# /etc/nsproxy/secrets (root only, 0700) and /var/lib/nsproxy; loads tun
# at boot. Safe to run again (an upgrade): policies and secrets are never
# touched. The Debian package (packaging/build-deb.sh) is the other way.
#
# Environment: PREFIX (default /usr/local); DESTDIR (a staging root: no
# root needed, nothing outside it is touched, apt is not run);
# NSPROXY_BIN (install this binary instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
say() { echo "install: $*"; }
die() { echo "install: error: $*" >&2; exit 1; }

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (sudo $0), or set DESTDIR to stage the files"
fi

# What nsproxy needs on the host: the system's CA certificates (https
# health checks and the proxy service), a C compiler and libc headers to
# build (ring). Nothing else: the test suite's proxies are not installed.
if [ -z "$DESTDIR" ]; then
  need=()
  for p in ca-certificates gcc libc6-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install them with your package manager"
    say "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
fi

bin=${NSPROXY_BIN:-}
if [ -z "$bin" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  want=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  command -v rustc >/dev/null && command -v cargo >/dev/null \
    || die "no Rust toolchain (rustc $want or newer is needed): install one with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh"
  have=$(rustc --version | awk '{print $2}')
  # Numeric comparison of major.minor.patch (a missing part counts as 0).
  older=$(awk -v a="$have" -v b="$want" 'BEGIN {
    split(a, x, /[.-]/); split(b, y, /[.-]/)
    for (i = 1; i <= 3; i++) { if (x[i] + 0 < y[i] + 0) { print 1; exit } if (x[i] + 0 > y[i] + 0) { print 0; exit } }
    print 0 }')
  if [ "$older" = 1 ]; then
    die "rustc $have is older than $want (rust-version in Cargo.toml): update it with \`rustup update stable\` (or install rustup: https://rustup.rs); Debian's rustc package is too old for this crate"
  fi
  say "building with rustc $have (needs $want)"
  cargo build --release --locked --quiet
  bin=target/release/nsproxy
fi
[ -x "$bin" ] || die "$bin is not an executable"

root=$DESTDIR
owner=()
[ -z "$DESTDIR" ] && owner=(-o root -g root)
inst() { install "${owner[@]}" "$@"; }
inst -d -m 0755 "$root$PREFIX/bin" "$root$PREFIX/share/man/man1" "$root$PREFIX/share/man/man5" \
  "$root$PREFIX/share/bash-completion/completions" "$root$PREFIX/share/zsh/site-functions" \
  "$root$PREFIX/share/fish/vendor_completions.d" "$root/etc/systemd/system" "$root/etc/modules-load.d" \
  "$root/etc/nsproxy"
# A new file then a rename: a running daemon keeps its binary.
inst -m 0755 "$bin" "$root$PREFIX/bin/.nsproxy.new"
mv -f "$root$PREFIX/bin/.nsproxy.new" "$root$PREFIX/bin/nsproxy"
say "installed $root$PREFIX/bin/nsproxy ($("$root$PREFIX/bin/nsproxy" --version))"
nsp="$root$PREFIX/bin/nsproxy"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$nsp" man --dir "$tmp/man" >/dev/null
gzip -9nf "$tmp"/man/*
inst -m 0644 "$tmp"/man/*.1.gz "$root$PREFIX/share/man/man1/"
inst -m 0644 "$tmp"/man/*.5.gz "$root$PREFIX/share/man/man5/"
"$nsp" completions bash >"$tmp/nsproxy.bash"
"$nsp" completions zsh >"$tmp/_nsproxy"
"$nsp" completions fish >"$tmp/nsproxy.fish"
inst -m 0644 "$tmp/nsproxy.bash" "$root$PREFIX/share/bash-completion/completions/nsproxy"
inst -m 0644 "$tmp/_nsproxy" "$root$PREFIX/share/zsh/site-functions/_nsproxy"
inst -m 0644 "$tmp/nsproxy.fish" "$root$PREFIX/share/fish/vendor_completions.d/nsproxy.fish"
say "manual pages (man nsproxy, man 5 nsproxy-policy) and completions under $root$PREFIX/share"
# The unit, pointing at this binary.
sed "s|/usr/bin/nsproxy|$PREFIX/bin/nsproxy|g" packaging/systemd/nsproxy@.service >"$tmp/nsproxy@.service"
inst -m 0644 "$tmp/nsproxy@.service" "$root/etc/systemd/system/nsproxy@.service"
inst -d -m 0755 "$root$PREFIX/share/doc/nsproxy/examples"
for f in packaging/examples/*.service; do
  sed "s|/usr/bin/nsproxy|$PREFIX/bin/nsproxy|g" "$f" >"$tmp/$(basename "$f")"
  inst -m 0644 "$tmp/$(basename "$f")" "$root$PREFIX/share/doc/nsproxy/examples/"
done
inst -m 0644 policies/examples/*.yaml "$root$PREFIX/share/doc/nsproxy/examples/"
echo tun >"$tmp/nsproxy.conf"
inst -m 0644 "$tmp/nsproxy.conf" "$root/etc/modules-load.d/nsproxy.conf"
inst -m 0644 packaging/examples/*.conflist "$root$PREFIX/share/doc/nsproxy/examples/"
say "nsproxy@.service in $root/etc/systemd/system, example bot units and CNI network in $root$PREFIX/share/doc/nsproxy/examples"
# The CNI plugin: the same binary under the name runtimes call, where
# containerd and kubelet (/opt/cni/bin) and Debian's podman (/usr/lib/cni)
# look for plugins.
for d in /opt/cni/bin /usr/lib/cni; do
  inst -d -m 0755 "$root$d"
  ln -sfn "$PREFIX/bin/nsproxy" "$root$d/nsproxy-cni"
done
say "CNI plugin nsproxy-cni in $root/opt/cni/bin and $root/usr/lib/cni (see docs/containers.md)"
# Policies and secrets: root's alone. Existing ones are left as they are,
# but a directory anyone else can read is corrected (and said).
for d in /etc/nsproxy/policies /etc/nsproxy/secrets /var/lib/nsproxy; do
  if [ -d "$root$d" ]; then
    mode=$(stat -c %a "$root$d")
    if [ "$mode" != 700 ]; then
      chmod 0700 "$root$d"
      say "$root$d had mode $mode: now 0700"
    fi
  else
    inst -d -m 0700 "$root$d"
  fi
done
say "policies go in $root/etc/nsproxy/policies, secret files (root, 0600) in $root/etc/nsproxy/secrets"
if [ -z "$DESTDIR" ]; then
  [ -e /dev/net/tun ] || modprobe tun 2>/dev/null || say "warning: /dev/net/tun is missing (modprobe tun)"
  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
  say "done. Next: write a policy, \`sudo nsproxy policy check\`, then \`sudo systemctl enable --now nsproxy@ACCOUNT\`"
fi
