#!/usr/bin/env bash
# Installs what nsproxy's build, demo and test suite need on Debian/Ubuntu.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(build-essential pkg-config curl ca-certificates iproute2 procps passwd openssl
      microsocks dante-server tinyproxy stunnel4 dnsmasq-base dnsutils python3 python3-websockets python3-venv iputils-ping tcpdump
      nginx wrk apache2-utils proxychains4
      dpkg-dev podman containerd runc containernetworking-plugins busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # Debian's packages start their own services where an init system runs;
  # the tests start their own instances in namespaces and never use those
  # (containerd: a private instance per test; podman: a private config;
  # Debian's /etc/cni/net.d/87-podman-bridge.conflist is never used).
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "installing the Rust toolchain with rustup (needs internet)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  fi
fi
# cargo-deb builds the .deb the VM stage installs (packaging/build-deb.sh).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb from crates.io"
  cargo install --locked --quiet cargo-deb
fi
# Python's `cryptography` from PyPI, for the Fernet interoperability tests
# (tokens made by the Python tooling must decrypt in nsproxy and back).
VENV=/opt/nsproxy-test/venv
if ! "$VENV/bin/python" -c 'import cryptography.fernet' 2>/dev/null; then
  echo "installing Python's cryptography into $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'cryptography>=41'
fi
# aioquic from PyPI: HTTP/3 server and client for the QUIC test (udp: proxy).
if ! "$VENV/bin/python" -c 'import aioquic.h3.connection' 2>/dev/null; then
  echo "installing Python's aioquic into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'aioquic>=1.0'
fi
# promtool, Prometheus' linter for the metrics exposition: unpacked from
# Debian's prometheus package (nothing installed, no service started).
PROMTOOL=/opt/nsproxy-test/bin/promtool
if ! "$PROMTOOL" --version >/dev/null 2>&1; then
  echo "unpacking promtool from Debian's prometheus package into /opt/nsproxy-test"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb root)
  install -D -m 0755 "$tmp/root/usr/bin/promtool" "$PROMTOOL"
  rm -rf "$tmp"
fi
[ -e /dev/net/tun ] || { modprobe tun 2>/dev/null || true; }
[ -e /dev/net/tun ] || { echo "error: /dev/net/tun is missing (load the tun kernel module)"; exit 1; }
