#!/usr/bin/env bash
# Makes sure a `redis-server` binary is on PATH for the BullMQ peer benchmark
# (bench/peers/bullmq.ts). If it is missing, installs Debian's `redis-server`
# package with apt-get (running `apt-get update` first when the package is not
# known yet). The package's init script is kept from starting a system-wide
# redis (a temporary /usr/sbin/policy-rc.d is used if none exists): the
# benchmark starts its own redis-server on a free loopback port.
#
# Prints the path of redis-server on success; exits non-zero with a clear
# message on stderr when it cannot be provisioned.
set -euo pipefail

if path="$(command -v redis-server)"; then
  echo "$path"
  exit 0
fi

fail() {
  echo "provision-redis: $*" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 ||
  fail "redis-server is not on PATH and apt-get is unavailable; install redis-server (>= 6.2) manually"
[ "$(id -u)" -eq 0 ] ||
  fail "redis-server is not on PATH and installing it with apt-get needs root; run: sudo apt-get install -y redis-server"

export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  made_policy=1
fi
cleanup() {
  if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

if ! apt-cache show redis-server >/dev/null 2>&1; then
  apt-get update -qq >&2 || fail "apt-get update failed"
fi
apt-get install -y -qq --no-install-recommends redis-server >&2 ||
  fail "apt-get install redis-server failed"

path="$(command -v redis-server)" || fail "redis-server still not on PATH after installing it"
echo "$path"
