#!/usr/bin/env bash
# Provision a Chromium for the console's browser tests (playwright-core drives it) and print its
# path on stdout.
#
# Order of preference:
#   1. $CHROMIUM_BIN, if set and executable;
#   2. a chromium (or chromium-browser) on PATH;
#   3. on a Debian-like machine: Debian's `chromium` package, installed with apt-get (as root, or
#      through sudo when that is available without a password prompt);
#   4. otherwise fail, saying how to install one.
# Progress goes to stderr; stdout carries only the path. Idempotent and fast once installed.
set -euo pipefail

log() { printf 'provision-chromium: %s\n' "$*" >&2; }

works() { "$1" --version >/dev/null 2>&1; }

if [ -n "${CHROMIUM_BIN:-}" ]; then
  if [ -x "$CHROMIUM_BIN" ] && works "$CHROMIUM_BIN"; then
    echo "$CHROMIUM_BIN"
    exit 0
  fi
  log "CHROMIUM_BIN=$CHROMIUM_BIN is not a working chromium; trying others"
fi

for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1 && works "$(command -v "$name")"; then
    command -v "$name"
    exit 0
  fi
done

how_to="Install Debian's chromium package (apt-get install chromium) or any Chromium/Chrome, and put it on PATH or set CHROMIUM_BIN."

if ! command -v apt-get >/dev/null 2>&1; then
  log "no chromium found and this is not a Debian-like machine (no apt-get)."
  log "$how_to"
  exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    log "chromium is not installed, and installing it needs root (no password-less sudo here)."
    log "$how_to"
    exit 1
  fi
fi

log "installing Debian's chromium package with apt-get (one time; this takes a minute)"
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >&2; then
  log "apt-get install failed; refreshing the package lists once and trying again"
  "${as_root[@]}" apt-get update -qq >&2 || true
  if ! "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >&2; then
    log "apt-get install chromium failed."
    log "$how_to"
    exit 1
  fi
fi

for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1 && works "$(command -v "$name")"; then
    log "installed $("$(command -v "$name")" --version)"
    command -v "$name"
    exit 0
  fi
done
log "the chromium package installed, but no working chromium is on PATH."
log "$how_to"
exit 1
