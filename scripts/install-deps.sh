#!/usr/bin/env bash
# Installs the Debian packages the demo and the test suite drive for real:
# HAProxy, Apache, git, rpm (to inspect .rpm files), iproute2; dpkg-dev and man-db
# for the packaging test (cargo-deb's dependency scan, `man handover`).
# prometheus (with promtool) for the metrics tests, chromium + chromium-driver for
# the web page's browser tests (issue 16).
# Idempotent; needs root (or sudo).
set -euo pipefail

# One package per line, so a feature adds its own line.
packages=(
  haproxy
  apache2
  git
  rpm
  iproute2
  ca-certificates
  dpkg-dev
  man-db
  sqlite3
  prometheus
  chromium
  chromium-driver
  etcd-server
  etcd-client
  protobuf-compiler
)
# moto's server mode (PyPI), the AWS stand-in of the AWS provider's tests (issue 15).
command -v moto_server >/dev/null || python3 -m pip install --quiet 'moto[server]==5.2.1' ||
  echo "install-deps: could not pip install 'moto[server]': the AWS provider's tests need moto_server on PATH" >&2
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian packages start their own services; the tests run their own instances.
for s in haproxy apache2 etcd; do
  "${sudo[@]}" systemctl disable --now "$s" >/dev/null 2>&1 || "${sudo[@]}" service "$s" stop >/dev/null 2>&1 || true
done
