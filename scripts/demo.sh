#!/usr/bin/env bash
# The quick-start demo: the surge runbook on a local fleet behind a real HAProxy
# (three Apache app servers on 127.0.1.1-3, three standby hosts on 127.0.1.4-6, a
# sqlite db host, an agent on every host, a coordinator): v2 goes onto the standby
# hosts and they take over from the old servers while clients send requests and
# long sessions stay pinned to the old servers by the persistence cookie. Ends with
# "requests: N ok, M failed; sessions cut: K"; exits non-zero if M or K > 0.
# `--in-place` upgrades the same servers in waves instead; `--etcd` runs two
# bastions on one etcd (the first killed mid-rollout, the second finishes it).
# Everything runs on loopback in a temporary directory and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "==> building handover, handover-agent and the demo"
cargo build --quiet --bins
exec target/debug/handover-demo "$@"
