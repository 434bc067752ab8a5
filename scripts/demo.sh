#!/usr/bin/env bash
# A local fleet on loopback: a private CA, two agents (web-1 on 127.0.1.1, web-2 on
# 127.0.1.2) and a coordinator asking them how they are over mutual-TLS QUIC.
# Everything lives in a temporary directory and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "==> building"
cargo build --quiet --bins
bin=$PWD/target/debug
work=$(mktemp -d /tmp/handover-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
run() { echo "+ $*"; "$@"; }

echo "==> a private CA and certificates (work dir: $work)"
run "$bin/handover" ca init --dir pki
for n in 1 2; do
  run "$bin/handover" ca issue --dir pki --role agent --name "web-$n" --ip "127.0.1.$n" >/dev/null
done
run "$bin/handover" ca issue --dir pki --role coordinator --name ops >/dev/null

echo "==> two agents"
for n in 1 2; do
  mkdir -p "web-$n"
  cat > "web-$n/agent.toml" <<TOML
name = "web-$n"
listen = "127.0.1.$n:7443"
ca = "../pki/ca.pem"
cert = "../pki/web-$n.pem"
key = "../pki/web-$n.key"
state_dir = "state"
control_socket = "state/control.sock"
TOML
  "$bin/handover-agent" run --config "web-$n/agent.toml" 2>"web-$n/agent.log" &
  pids+=($!)
done
for n in 1 2; do
  for _ in $(seq 100); do [[ -S web-$n/state/control.sock ]] && break; sleep 0.05; done
done

cat > handover.toml <<TOML
ca = "pki/ca.pem"
cert = "pki/ops.pem"
key = "pki/ops.key"
state_dir = "journal"

[[hosts]]
name = "web-1"
address = "127.0.1.1:7443"
roles = ["app"]

[[hosts]]
name = "web-2"
address = "127.0.1.2:7443"
roles = ["app"]
TOML

echo "==> the coordinator asks every agent"
run "$bin/handover" --config handover.toml status
echo "==> a coordinator certificate from another CA is refused"
"$bin/handover" ca init --dir other-ca >/dev/null
"$bin/handover" ca issue --dir other-ca --role coordinator --name intruder >/dev/null
sed -e 's#pki/ops#other-ca/intruder#' handover.toml > intruder.toml
run "$bin/handover" --config intruder.toml status || echo "(refused, as it must be: exit $?)"
echo "==> demo done"
