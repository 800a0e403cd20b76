#!/usr/bin/env bash
# Builds a Debian package of nsproxy from the release binary:
#   packaging/build-deb.sh [OUT_DIR]      -> OUT_DIR/nsproxy_VERSION_amd64.deb
# Contents: /usr/bin/nsproxy, the systemd units, shell completions and
# manual pages generated from the CLI, the tun module loaded at boot, the
# documentation and example policies, and an empty /etc/nsproxy/policies.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=$(realpath -m "${1:-target/debian}")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
cargo build --release --locked --quiet
bin=target/release/nsproxy
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/bin/nsproxy"
strip --strip-debug "$root/usr/bin/nsproxy"
install -D -m 0644 packaging/systemd/nsproxy@.service "$root/lib/systemd/system/nsproxy@.service"
install -D -m 0644 packaging/systemd/nsproxy-exec-example.service "$root/usr/share/doc/nsproxy/examples/nsproxy-exec-example.service"
install -d -m 0755 "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d" "$root/usr/share/man/man1"
"$bin" completions bash >"$root/usr/share/bash-completion/completions/nsproxy"
"$bin" completions zsh >"$root/usr/share/zsh/vendor-completions/_nsproxy"
"$bin" completions fish >"$root/usr/share/fish/vendor_completions.d/nsproxy.fish"
"$bin" man --dir "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1
echo tun | install -D -m 0644 /dev/stdin "$root/usr/lib/modules-load.d/nsproxy.conf"
install -D -m 0644 README.md "$root/usr/share/doc/nsproxy/README.md"
install -m 0644 docs/*.md -t "$root/usr/share/doc/nsproxy/"
install -m 0644 policies/README.md "$root/usr/share/doc/nsproxy/policies.md"
install -m 0644 policies/examples/*.yaml -t "$root/usr/share/doc/nsproxy/examples/"
install -d -m 0755 "$root/etc/nsproxy"
install -d -m 0700 "$root/etc/nsproxy/policies"
size=$(du -sk "$root" | cut -f1)
install -d "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<CONTROL
Package: nsproxy
Version: $version
Architecture: $arch
Maintainer: nsproxy developers <nsproxy@localhost>
Depends: libc6 (>= 2.36)
Recommends: systemd
Installed-Size: $size
Section: net
Priority: optional
Homepage: https://example.invalid/nsproxy
Description: run unmodified programs whose every connection leaves through a proxy
 nsproxy gives each trading account a network namespace whose only route
 is a TUN device; a per-account daemon turns every TCP flow into a
 connection through the account's SOCKS5 or HTTP CONNECT proxy pool and
 answers DNS through it too. Anything that cannot be proxied fails closed.
CONTROL
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
install -d -m 0700 /var/lib/nsproxy
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
POSTINST
cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ "$1" = purge ]; then rm -rf /var/lib/nsproxy; fi
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/nsproxy_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
