#!/usr/bin/env bash
# Provisions the nsproxy test VM (run by `vagrant up`, as root, inside the
# VM): the test proxies, origin servers and tools from Debian, then nsproxy
# built from the synced sources with a rustup toolchain and installed in
# /usr/local/bin. With NSP_VM_PREBUILT=1 (the offline CI box, which has
# every package and no network) nothing is downloaded and nothing built:
# CI copies in binaries built on the host.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SRC=${NSP_VM_SRC:-/home/vagrant/nsproxy}
# What the end-to-end suite starts: the proxies (microsocks, dante,
# tinyproxy), the origin's DNS (dnsmasq) and servers (python3), the
# clients (curl, dig, python3-websockets), the probes and captures.
VM_PACKAGES="microsocks dante-server tinyproxy dnsmasq-base dnsutils curl ca-certificates python3 python3-websockets python3-cryptography iputils-ping tcpdump openssl passwd util-linux procps iproute2"

missing=()
for p in $VM_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${NSP_VM_PREBUILT:-0}" = 1 ]; then
    echo "error: the box lacks ${missing[*]} and this VM has no network (NSP_VM_PREBUILT=1)" >&2
    exit 1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" build-essential pkg-config >/dev/null
fi
# The secrets tests call Python's `cryptography` at this path (a venv on
# build hosts); Debian's python3-cryptography does the same job here.
if [ ! -x /opt/nsproxy-test/venv/bin/python ]; then
  install -d /opt/nsproxy-test/venv/bin
  ln -sf /usr/bin/python3 /opt/nsproxy-test/venv/bin/python
fi
[ -e /dev/net/tun ] || modprobe tun

if [ "${NSP_VM_PREBUILT:-0}" = 1 ]; then
  echo "provisioned (prebuilt binaries come from the host)"
  exit 0
fi
# The toolchain for the vagrant user, then a release build of the synced
# sources, installed like an operator would.
if ! runuser -u vagrant -- test -x /home/vagrant/.cargo/bin/cargo; then
  runuser -u vagrant -- sh -c "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -q"
fi
runuser -u vagrant -- sh -c "cd '$SRC' && /home/vagrant/.cargo/bin/cargo build --release --locked -q"
install -m 0755 "$SRC/target/release/nsproxy" /usr/local/bin/nsproxy
echo "provisioned: $(/usr/local/bin/nsproxy --version)"
echo "run the end-to-end suite: vagrant ssh -c 'sudo $SRC/vagrant/e2e.sh'"
