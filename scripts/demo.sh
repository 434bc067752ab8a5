#!/usr/bin/env bash
# The quick-start demo: a local fleet behind a real HAProxy (three Apache app
# servers on 127.0.1.1-3, an agent on every host, a coordinator) upgraded from v1
# to v2 with `handover rollout` while clients send requests through HAProxy.
# Everything runs on loopback in a temporary directory and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "==> building handover, handover-agent and the demo"
cargo build --quiet --bins
exec target/debug/handover-demo "$@"
