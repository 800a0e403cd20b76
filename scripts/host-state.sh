#!/usr/bin/env bash
# What nsproxy and its tests can leave on a host, one line per thing,
# sorted: network namespaces, links of the host's namespace, account run
# and state directories, containers' CNI locks, /etc/netns entries and
# the tests' temporary directories. scripts/test.sh compares it before and after the tests:
# every test removes what it made, also when it fails.
set -uo pipefail
{
  ip netns list | awk '{print "netns " $1}'
  ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}'
  # nsproxy's own host-wide files stay: the namespace lock, the CNI
  # plugin's directory and its per-account locks (a container's goes
  # with its DEL).
  find /run/nsproxy /var/lib/nsproxy /etc/netns /run/nsproxy/.cni -mindepth 1 -maxdepth 1 \
    ! -path /run/nsproxy/.cni ! -path /run/nsproxy/.netns.lock ! -name 'account-*.lock' 2>/dev/null | sed 's/^/path /'
  find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'nsproxy-*' 2>/dev/null | sed 's/^/tmp /'
} | LC_ALL=C sort
