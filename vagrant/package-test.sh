#!/usr/bin/env bash
# Inside the VM (systemd is PID 1 there), as root: installs the .deb built
# by packaging/build-deb.sh and proves the operator's path end to end:
# `nsproxy --help`, completions and man pages in place, `policy check`,
# then an account run by nsproxy@.service (Type=notify readiness, the
# hardening options), a bot as its own unit through `nsproxy exec`, a
# daemon killed and restarted by systemd, a stop that fails closed, and
# `nsproxy down`. The proxy (microsocks) and the origin live in a
# namespace this script creates and deletes; nothing leaves the VM.
#   sudo vagrant/package-test.sh /path/to/nsproxy_VERSION_amd64.deb
set -euo pipefail
deb=${1:?usage: package-test.sh NSPROXY.deb}
[ "$(id -u)" = 0 ] || { echo "error: run as root" >&2; exit 1; }
[ "$(ps -p 1 -o comm=)" = systemd ] || { echo "error: needs systemd as PID 1 (run it in the VM)" >&2; exit 1; }
# As systemd would run it: root, not a sudo caller (exec would otherwise
# take the sudo caller as the one asking).
unset SUDO_USER SUDO_UID SUDO_GID SUDO_COMMAND
p="nspkg$$"
acct="pkg-$$"
ns_proxy="$p-px"
pw=canary-pkg-$$-secret
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
cleanup() {
  systemctl stop "bot-$acct.service" "nsproxy@$acct.service" >/dev/null 2>&1 || true
  nsproxy down "$acct" --kill >/dev/null 2>&1 || true
  rm -f "/etc/systemd/system/bot-$acct.service" "/etc/nsproxy/policies/$acct.yaml" "/etc/nsproxy/$acct.pw"
  systemctl daemon-reload || true
  [ -s "/tmp/$p-px.pids" ] && kill $(cat "/tmp/$p-px.pids") 2>/dev/null || true
  ip netns del "$ns_proxy" 2>/dev/null || true
  ip link del "${p}h" 2>/dev/null || true
  rm -rf "/tmp/$p-"*
}
trap cleanup EXIT

dpkg -i "$deb" >/dev/null
command -v nsproxy >/dev/null || fail "nsproxy not on PATH after dpkg -i"
nsproxy --help | grep -q "Usage: nsproxy" || fail "nsproxy --help"
ok "installed $(nsproxy --version) from $(basename "$deb")"
for f in /usr/share/bash-completion/completions/nsproxy /usr/share/man/man1/nsproxy.1.gz \
         /usr/share/man/man1/nsproxy-up.1.gz /lib/systemd/system/nsproxy@.service; do
  [ -s "$f" ] || fail "$f missing"
done
zcat /usr/share/man/man1/nsproxy-up.1.gz | grep -q foreground || fail "nsproxy-up.1 lacks --foreground"
# (Documentation= man: links fail to resolve where man-db is not installed.)
complaints=$(systemd-analyze verify /lib/systemd/system/nsproxy@.service 2>&1 | grep -v "Command 'man " | grep -v '^$' || true)
[ -z "$complaints" ] || fail "systemd-analyze verify: $complaints"
ok "completions, man pages and the unit in place"

# The proxy's namespace: microsocks on 10.231.0.2:1080 (reached from the
# host over a veth), the origin on 10.231.1.1:8080 (its loopback only: the
# host has no route to it, so an answer proves the proxy carried it).
ip netns add "$ns_proxy"
ip link add "${p}h" type veth peer name eth0 netns "$ns_proxy"
ip addr add 10.231.0.1/24 dev "${p}h"; ip link set "${p}h" up
ip -n "$ns_proxy" addr add 10.231.0.2/24 dev eth0; ip -n "$ns_proxy" link set eth0 up
ip -n "$ns_proxy" link set lo up; ip -n "$ns_proxy" addr add 10.231.1.1/32 dev lo
mkdir -p "/tmp/$p-www"; echo "origin-says-hello" >"/tmp/$p-www/index.html"
ip netns exec "$ns_proxy" python3 -m http.server -b 10.231.1.1 -d "/tmp/$p-www" 8080 >/dev/null 2>&1 &
echo $! >>"/tmp/$p-px.pids"
ip netns exec "$ns_proxy" microsocks -i 10.231.0.2 -p 1080 -u pkguser -P "$pw" >/dev/null 2>&1 &
echo $! >>"/tmp/$p-px.pids"
# Both must listen before anything is asked of them (Python starts slowly
# under emulation).
for addr in 10.231.0.2:1080 10.231.1.1:8080; do
  for _ in $(seq 300); do ip netns exec "$ns_proxy" ss -ltnH | grep -q " $addr " && break; sleep 0.1; done
  ip netns exec "$ns_proxy" ss -ltnH | grep -q " $addr " || fail "nothing listens on $addr in $ns_proxy after 30 s"
done

id nspbot >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin nspbot
install -m 0600 /dev/null "/etc/nsproxy/$acct.pw"; printf '%s' "$pw" >"/etc/nsproxy/$acct.pw"
cat >"/etc/nsproxy/policies/$acct.yaml" <<POLICY
accounts:
  - name: $acct
    exec:
      users: [nspbot]
    proxies:
      - label: pkg-proxy
        url: socks5://10.231.0.2:1080
        username: pkguser
        password_file: /etc/nsproxy/$acct.pw
    health_check:
      interval: 2s
      target: tcp://10.231.1.1:8080
POLICY
nsproxy policy check >/dev/null || { nsproxy policy check; fail "policy check of /etc/nsproxy/policies"; }
ok "policy check of /etc/nsproxy/policies"

# The account under systemd: `start` returns once the daemon said READY=1.
systemctl start "nsproxy@$acct.service" || { journalctl -u "nsproxy@$acct" --no-pager | tail -20; fail "start"; }
[ "$(systemctl is-active "nsproxy@$acct")" = active ] || fail "not active"
pid=$(systemctl show -p MainPID --value "nsproxy@$acct")
ok "nsproxy@$acct active (Type=notify), daemon pid $pid"
got=$(nsproxy exec "$acct" --user nspbot -- curl -sS -m 5 http://10.231.1.1:8080/)
[ "$got" = origin-says-hello ] || fail "exec curl through the proxy: $got"
ok "nsproxy exec as nspbot reaches the origin through the proxy"

# A bot as its own unit (from the shipped example).
sed -e "s/account-a/$acct/g" -e "s|--user bot -- .*|--user nspbot -- sh -c 'curl -sS -m 5 http://10.231.1.1:8080/ > /tmp/$p-bot.out'|" \
    -e 's/^Restart=.*/Type=oneshot/' -e '/^RestartSec/d' \
    /usr/share/doc/nsproxy/examples/nsproxy-exec-example.service >"/etc/systemd/system/bot-$acct.service"
install -m 0666 /dev/null "/tmp/$p-bot.out"
systemctl daemon-reload
systemctl start "bot-$acct.service" || { journalctl -u "bot-$acct" --no-pager | tail; fail "bot unit"; }
[ "$(cat "/tmp/$p-bot.out")" = origin-says-hello ] || fail "bot unit output: $(cat "/tmp/$p-bot.out")"
ok "a bot unit (Requires=nsproxy@$acct) got its answer through the proxy"

# systemd restarts a daemon that dies; programs meanwhile fail closed.
kill -9 "$pid"
for _ in $(seq 100); do
  new=$(systemctl show -p MainPID --value "nsproxy@$acct")
  [ "$new" != 0 ] && [ "$new" != "$pid" ] && [ "$(systemctl is-active "nsproxy@$acct")" = active ] && break
  sleep 0.2
done
[ "$new" != "$pid" ] && [ "$new" != 0 ] || fail "not restarted after SIGKILL"
got=$(nsproxy exec "$acct" --user nspbot -- curl -sS -m 5 http://10.231.1.1:8080/)
[ "$got" = origin-says-hello ] || fail "after the restart: $got"
ok "daemon SIGKILLed: restarted by systemd (pid $pid -> $new, NRestarts=$(systemctl show -p NRestarts --value "nsproxy@$acct")), traffic flows again"

# Stop: the namespace stays, with no way out.
systemctl stop "nsproxy@$acct"
ip netns exec "nsp-$acct" curl -sS -m 3 http://10.231.1.1:8080/ >/dev/null 2>&1 && fail "traffic left a stopped account"
ok "stopped: the namespace has no route out"
journalctl -u "nsproxy@$acct" --no-pager | grep -q "$pw" && fail "the password is in the journal"
ok "the password is nowhere in the journal"
nsproxy down "$acct" >/dev/null
ip netns list | grep -q "nsp-$acct" && fail "nsproxy down left the namespace"
ok "nsproxy down removed the namespace"
echo "package test passed"
