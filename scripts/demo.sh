#!/usr/bin/env bash
# Demo on a fresh machine: a local SOCKS5 proxy (microsocks, with a
# password) and a test web server in namespaces of their own, an nsproxy
# account using that proxy, and `curl` run inside the account. The web
# server answers with the address it sees: the proxy's, not the host's.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: sudo $0"; exit 1; }
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -q
BIN=$PWD/target/release/nsproxy
id nspdemo >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin nspdemo

P=nspdemo$$; WORK=$(mktemp -d); chmod 755 "$WORK"
cleanup() {
  set +e
  "$BIN" --policies "$WORK/policy.yaml" down demo --kill >/dev/null 2>&1
  [ -n "${PX_PID:-}" ] && kill "$PX_PID" 2>/dev/null
  [ -n "${WEB_PID:-}" ] && kill "$WEB_PID" 2>/dev/null
  ip netns del $P-web 2>/dev/null; ip netns del $P-px 2>/dev/null; ip link del $P-h 2>/dev/null
  rm -rf /etc/netns/$P-px "$WORK"
}
trap cleanup EXIT

echo "== test network: web server 10.199.9.2 (\"api.exchange.test\"), SOCKS5 proxy 10.199.8.2 whose egress is 10.199.9.1"
ip netns add $P-web; ip netns add $P-px
ip link add $P-h type veth peer name eth0 netns $P-px
ip addr add 10.199.8.1/24 dev $P-h; ip link set $P-h up
ip -n $P-px addr add 10.199.8.2/24 dev eth0; ip -n $P-px link set eth0 up; ip -n $P-px link set lo up
ip -n $P-px link add eth1 type veth peer name eth0 netns $P-web
ip -n $P-px addr add 10.199.9.1/24 dev eth1; ip -n $P-px link set eth1 up
ip -n $P-web addr add 10.199.9.2/24 dev eth0; ip -n $P-web link set eth0 up; ip -n $P-web link set lo up
mkdir -p /etc/netns/$P-px; echo "10.199.9.2 api.exchange.test" > /etc/netns/$P-px/hosts
cat > "$WORK/web.py" <<'PY'
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("you are " + self.client_address[0] + "\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()
PY
ip netns exec $P-web python3 "$WORK/web.py" & WEB_PID=$!
ip netns exec $P-px microsocks -i 10.199.8.2 -p 1080 -u demo -P demo-secret >/dev/null 2>&1 & PX_PID=$!
sleep 1

echo "== policy"
printf 'demo-secret\n' > "$WORK/proxy-password"; chmod 600 "$WORK/proxy-password"
cat > "$WORK/policy.yaml" <<YAML
accounts:
  - name: demo
    exec:
      users: [nspdemo]
    proxies:
      - label: demo-socks
        url: socks5://10.199.8.2:1080
        username: demo
        password_file: $WORK/proxy-password
YAML
cat "$WORK/policy.yaml"
"$BIN" --policies "$WORK/policy.yaml" policy check

echo "== nsproxy up demo"
"$BIN" --policies "$WORK/policy.yaml" up demo
"$BIN" --policies "$WORK/policy.yaml" status demo

echo "== curl inside the account (as user nspdemo), by name and by DNS"
"$BIN" --policies "$WORK/policy.yaml" exec demo --user nspdemo -- curl -sS -m 10 http://api.exchange.test/
"$BIN" --policies "$WORK/policy.yaml" exec demo --user nspdemo -- dig +short api.exchange.test
echo "   (a fake IP: the name is resolved by the proxy, never by the host)"
echo "== the egress address above is the proxy's (10.199.9.1). Stopping the proxy fails closed:"
kill "$PX_PID"; wait "$PX_PID" 2>/dev/null || true; PX_PID=
"$BIN" --policies "$WORK/policy.yaml" exec demo --user nspdemo -- curl -sS -m 5 http://api.exchange.test/ || echo "   -> refused, nothing left the host directly"
echo "== nsproxy down demo"
"$BIN" --policies "$WORK/policy.yaml" down demo --kill
