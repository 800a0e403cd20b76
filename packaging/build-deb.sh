#!/usr/bin/env bash
# Builds the Debian package of nsproxy with cargo-deb (its metadata is in
# Cargo.toml, [package.metadata.deb]):
#   packaging/build-deb.sh [OUT_DIR]      -> OUT_DIR/nsproxy_VERSION-1_amd64.deb
# Contents: /usr/bin/nsproxy, nsproxy@.service under /usr/lib/systemd/system
# (deb-systemd-helper snippets; no instance enabled), shell completions and
# manual pages generated from the CLI, the tun module loaded at boot, the
# documentation, example policies and bot units, and (made by postinst)
# /etc/nsproxy/policies and /etc/nsproxy/secrets (0700), /var/lib/nsproxy.
# Dependencies come from the binary (dpkg-shlibdeps).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=$(realpath -m "${1:-target/debian}")
command -v cargo-deb >/dev/null || { echo "error: cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }
command -v dpkg-shlibdeps >/dev/null || { echo "error: dpkg-shlibdeps is missing: apt-get install dpkg-dev" >&2; exit 1; }
cargo build --release --locked --quiet
bin=target/release/nsproxy
gen=target/deb-assets
rm -rf "$gen"
mkdir -p "$gen/completions" "$gen/man"
"$bin" completions bash >"$gen/completions/nsproxy"
"$bin" completions zsh >"$gen/completions/_nsproxy"
"$bin" completions fish >"$gen/completions/nsproxy.fish"
"$bin" man --dir "$gen/man" >/dev/null
gzip -9n "$gen"/man/*
mkdir -p "$out"
cargo deb --no-build --locked --quiet --strip --output "$out" | tail -1
