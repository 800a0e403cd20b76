#!/usr/bin/env bash
# Inside the VM (systemd is PID 1 there), as root: installs the .deb built
# by packaging/build-deb.sh and proves the operator's path end to end:
# `nsproxy --help`, completions and man pages in place, `policy check`,
# then an account run by nsproxy@.service (Type=notify readiness, the
# status line, the hardening scored by systemd-analyze security), bots as
# their own units (through `nsproxy exec` and through
# NetworkNamespacePath=) that survive the account's restart and fail
# closed while it is stopped, a daemon killed and restarted by systemd,
# the watchdog, a bad policy that is not restarted, a stop that fails
# closed, and `nsproxy down`. The proxy (microsocks) and the origin live in a
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
  systemctl stop "bot-exec-$acct.service" "bot-netns-$acct.service" "nsproxy@$acct.service" "nsproxy@$acct-bad.service" >/dev/null 2>&1 || true
  nsproxy down "$acct" --kill >/dev/null 2>&1 || true
  rm -rf "/etc/systemd/system/bot-exec-$acct.service" "/etc/systemd/system/bot-netns-$acct.service" \
    "/etc/systemd/system/nsproxy@$acct.service.d" "/etc/nsproxy/policies/$acct.yaml" "/etc/nsproxy/policies/$acct-bad.yaml" "/etc/nsproxy/$acct.pw"
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
         /usr/share/man/man1/nsproxy-up.1.gz /usr/share/man/man5/nsproxy-policy.5.gz /usr/lib/systemd/system/nsproxy@.service \
         /usr/share/doc/nsproxy/examples/nsproxy-bot-exec.service /usr/share/doc/nsproxy/examples/nsproxy-bot-netns.service \
         /usr/share/doc/nsproxy/copyright; do
  [ -s "$f" ] || fail "$f missing"
done
zcat /usr/share/man/man1/nsproxy-up.1.gz | grep -q foreground || fail "nsproxy-up.1 lacks --foreground"
# (Documentation= man: links fail to resolve where man-db is not installed.)
zcat /usr/share/man/man1/nsproxy.1.gz | grep -q "EXIT STATUS" || fail "nsproxy.1 lacks EXIT STATUS"
for d in /usr/lib/cni /opt/cni/bin; do
  v=$(CNI_COMMAND=VERSION "$d/nsproxy-cni" </dev/null) || fail "$d/nsproxy-cni VERSION"
  case "$v" in *'"supportedVersions"'*'"1.0.0"'*) ;; *) fail "$d/nsproxy-cni VERSION: $v" ;; esac
done
complaints=$(systemd-analyze verify /usr/lib/systemd/system/nsproxy@.service 2>&1 | grep -v "Command 'man " | grep -v '^$' || true)
[ -z "$complaints" ] || fail "systemd-analyze verify: $complaints"
ok "completions, man pages, the unit and the CNI plugin in place"

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

# The account under systemd: `start` returns once the daemon said READY=1
# (the namespace's only way out is the proxy); the status line follows
# the pool (STATUS=).
systemctl start "nsproxy@$acct.service" || { journalctl -u "nsproxy@$acct" --no-pager | tail -20; fail "start"; }
[ "$(systemctl is-active "nsproxy@$acct")" = active ] || fail "not active"
pid=$(systemctl show -p MainPID --value "nsproxy@$acct")
ok "nsproxy@$acct active (Type=notify), daemon pid $pid"
for _ in $(seq 100); do
  st=$(systemctl show -p StatusText --value "nsproxy@$acct")
  case "$st" in *"proxy pkg-proxy (socks5://10.231.0.2:1080)"*) break ;; esac
  sleep 0.2
done
case "$st" in *"proxy pkg-proxy (socks5://10.231.0.2:1080)"*"pool: 1 active"*) ;; *) fail "StatusText: $st" ;; esac
ok "systemctl status line: $st"
got=$(nsproxy exec "$acct" --user nspbot -- curl -sS -m 5 http://10.231.1.1:8080/)
[ "$got" = origin-says-hello ] || fail "exec curl through the proxy: $got"
ok "nsproxy exec as nspbot reaches the origin through the proxy"

# The hardening, as systemd scores it.
score=$(systemd-analyze security --no-pager "nsproxy@$acct.service" 2>&1 | tail -1)
echo "systemd-analyze security nsproxy@$acct.service: $score"
case "$score" in *"exposure level"*) ;; *) fail "systemd-analyze security: $score" ;; esac

# Bots as their own units, from the shipped examples: a loop that asks the
# origin every half second and logs ok/fail with its pid. One enters with
# `nsproxy exec`, the other is joined by systemd (NetworkNamespacePath=).
bot_loop="while :; do if curl -sS -m 2 http://10.231.1.1:8080/ >/dev/null 2>\&1; then echo \"\$\$\$\$ ok\"; else echo \"\$\$\$\$ fail\"; fi; sleep 0.5; done"
ex=/usr/share/doc/nsproxy/examples
sed -e "s/account-a/$acct/g" -e "s|--user bot -- .*|--user nspbot -- /bin/sh -c '$bot_loop'|" \
    -e "s|^Environment=.*|StandardOutput=append:/tmp/$p-bot-exec.out|" \
    "$ex/nsproxy-bot-exec.service" >"/etc/systemd/system/bot-exec-$acct.service"
sed -e "s/account-a/$acct/g" -e "s|^ExecStart=.*|ExecStart=/bin/sh -c '$bot_loop'|" -e "s/^User=bot/User=nspbot/" \
    -e "s|^Environment=.*|StandardOutput=append:/tmp/$p-bot-netns.out|" \
    "$ex/nsproxy-bot-netns.service" >"/etc/systemd/system/bot-netns-$acct.service"
systemctl daemon-reload
for b in exec netns; do
  systemd-analyze verify "/etc/systemd/system/bot-$b-$acct.service" 2>&1 | grep -v "Command 'man " | grep . && fail "bot-$b unit does not verify"
  systemctl start "bot-$b-$acct.service" || { journalctl -u "bot-$b-$acct" --no-pager | tail; fail "bot-$b unit"; }
done
# Lines of a bot's log since line $2: how many ok, how many fail, and
# whether one pid wrote them all.
since() { tail -n +"$(( $2 + 1 ))" "/tmp/$p-bot-$1.out"; }
lines() { wc -l <"/tmp/$p-bot-$1.out"; }
wait_ok() { # bot, from line, what
  for _ in $(seq 150); do since "$1" "$2" | grep -q " ok$" && return 0; sleep 0.2; done
  fail "bot-$1: no answer through the proxy $3: $(since "$1" "$2" | tail -3)"
}
for b in exec netns; do wait_ok "$b" 0 "after start"; done
bot_pid() { systemctl show -p MainPID --value "bot-$1-$acct"; }
pe=$(bot_pid exec); pn=$(bot_pid netns)
ok "bot units (Wants=, After=) get answers through the proxy: exec pid $pe, netns pid $pn"
# A bot in the namespace must resolve through the account's DNS: the
# host's resolv.conf is not what it sees.
ns_resolv=$(nsenter -t "$pn" -m cat /etc/resolv.conf)
case "$ns_resolv" in *"written by nsproxy"*) ;; *) fail "the netns bot sees another resolv.conf: $ns_resolv" ;; esac
ok "the netns bot sees the account's resolv.conf"

# Restart the account: the bots keep their pids and reconnect.
le=$(lines exec); ln=$(lines netns)
systemctl restart "nsproxy@$acct"
for b in exec netns; do wait_ok "$b" "$([ $b = exec ] && echo "$le" || echo "$ln")" "after restarting the account"; done
[ "$(bot_pid exec)" = "$pe" ] && [ "$(bot_pid netns)" = "$pn" ] || fail "a bot was restarted with the account: $pe->$(bot_pid exec) $pn->$(bot_pid netns)"
[ "$(since exec 0 | awk '{print $1}' | sort -u | wc -l)" = 1 ] || fail "the exec bot's loop changed pid"
ok "systemctl restart nsproxy@$acct: both bots kept their pids ($pe, $pn) and reconnected"

# Stop the account: the bots keep running with no way out (fail closed).
systemctl stop "nsproxy@$acct"
sleep 1
le=$(lines exec); ln=$(lines netns)
sleep 4
for b in exec netns; do
  from=$([ $b = exec ] && echo "$le" || echo "$ln")
  since "$b" "$from" | grep -q " ok$" && fail "bot-$b reached the origin while the account was stopped"
  since "$b" "$from" | grep -q " fail$" || fail "bot-$b stopped asking while the account was stopped"
done
[ "$(systemctl is-active "bot-exec-$acct")" = active ] && [ "$(systemctl is-active "bot-netns-$acct")" = active ] || fail "a bot stopped with the account"
ok "systemctl stop nsproxy@$acct: both bots still run, every request fails (fail closed)"
systemctl start "nsproxy@$acct"
le=$(lines exec); ln=$(lines netns)
for b in exec netns; do wait_ok "$b" "$([ $b = exec ] && echo "$le" || echo "$ln")" "after starting the account again"; done
ok "started again: both bots reconnect (pids $(bot_pid exec), $(bot_pid netns))"
systemctl stop "bot-exec-$acct" "bot-netns-$acct"
pid=$(systemctl show -p MainPID --value "nsproxy@$acct")

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

# The watchdog: a daemon that answers keeps running; a wedged one (here
# SIGSTOPped) is killed and started again. A drop-in shortens the period.
install -d "/etc/systemd/system/nsproxy@$acct.service.d"
printf '[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n' >"/etc/systemd/system/nsproxy@$acct.service.d/watchdog.conf"
systemctl daemon-reload
systemctl restart "nsproxy@$acct"
pid=$(systemctl show -p MainPID --value "nsproxy@$acct")
restarts=$(systemctl show -p NRestarts --value "nsproxy@$acct")
sleep 8
[ "$(systemctl show -p MainPID --value "nsproxy@$acct")" = "$pid" ] || fail "a healthy daemon was restarted by the watchdog"
kill -STOP "$pid"
for _ in $(seq 150); do
  new=$(systemctl show -p MainPID --value "nsproxy@$acct")
  [ "$new" != 0 ] && [ "$new" != "$pid" ] && [ "$(systemctl is-active "nsproxy@$acct")" = active ] && break
  sleep 0.2
done
[ "$new" != "$pid" ] || fail "a wedged daemon was not restarted by the watchdog"
for _ in $(seq 50); do journalctl --no-pager -n 200 | grep -qi "nsproxy@$acct.service: watchdog timeout" && break; sleep 0.2; done
journalctl --no-pager -n 200 | grep -qi "nsproxy@$acct.service: watchdog timeout" \
  || { journalctl --no-pager -n 30; fail "no watchdog timeout in the journal"; }
ok "watchdog: a healthy daemon ran on (8 s at WatchdogSec=3s); a SIGSTOPped one was restarted (pid $pid -> $new, NRestarts $restarts -> $(systemctl show -p NRestarts --value "nsproxy@$acct"))"
rm -rf "/etc/systemd/system/nsproxy@$acct.service.d"
systemctl daemon-reload

# A policy error is final: exit status 3, and RestartPreventExitStatus=
# keeps systemd from looping.
bad="$acct-bad"
printf 'accounts:\n  - name: %s\n    proxies:\n      - label: p\n        url: socks5://10.231.0.2:1080\n        passwrd_file: /nonexistent\n' "$bad" \
  >"/etc/nsproxy/policies/$bad.yaml"
systemctl start "nsproxy@$bad.service" 2>/dev/null && fail "a unit with a bad policy started"
sleep 5
[ "$(systemctl show -p ExecMainStatus --value "nsproxy@$bad")" = 3 ] || fail "bad policy: exit status $(systemctl show -p ExecMainStatus --value "nsproxy@$bad")"
[ "$(systemctl show -p NRestarts --value "nsproxy@$bad")" = 0 ] || fail "a bad policy was restarted $(systemctl show -p NRestarts --value "nsproxy@$bad") times"
journalctl -u "nsproxy@$bad" --no-pager | grep -q "did you mean" || fail "the journal does not say what is wrong"
ok "a bad policy: exit status 3, no restart, the journal names the field"
rm -f "/etc/nsproxy/policies/$bad.yaml"
systemctl reset-failed "nsproxy@$bad" 2>/dev/null || true

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
