#!/usr/bin/env bash
# Provision a nats-server >= 2.12 for jetflow and print its path on stdout.
#
# Order of preference:
#   1. $NATS_SERVER_BIN, if set and new enough;
#   2. a nats-server on PATH, if new enough;
#   3. one already provisioned into .nats/ by an earlier run;
#   4. on a Debian-like machine: Debian unstable's nats-server package, fetched with
#      `apt-get download` through a temporary sources list built from this machine's own
#      configured Debian mirror (suite "sid"), unpacked with `dpkg -x` into .nats/
#      (no system change);
#   5. otherwise fail, saying how to install one.
# Progress goes to stderr; stdout carries only the path. Idempotent and fast once provisioned.
set -euo pipefail

MIN_MAJOR=2
MIN_MINOR=12
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.nats"
bin="$dest/root/usr/sbin/nats-server"

log() { printf 'provision-nats: %s\n' "$*" >&2; }

# version_ok BINARY -> 0 when BINARY reports a version >= MIN
version_ok() {
  local v
  v="$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)" || return 1
  [ -n "$v" ] || return 1
  local major minor
  major="${v%%.*}"
  minor="${v#*.}"
  minor="${minor%%.*}"
  if [ "$major" -gt "$MIN_MAJOR" ] || { [ "$major" -eq "$MIN_MAJOR" ] && [ "$minor" -ge "$MIN_MINOR" ]; }; then
    return 0
  fi
  log "$1 is version $v; jetflow needs >= $MIN_MAJOR.$MIN_MINOR (message schedules, pinned priority groups)"
  return 1
}

if [ -n "${NATS_SERVER_BIN:-}" ]; then
  if [ -x "$NATS_SERVER_BIN" ] && version_ok "$NATS_SERVER_BIN"; then
    echo "$NATS_SERVER_BIN"
    exit 0
  fi
  log "NATS_SERVER_BIN=$NATS_SERVER_BIN is not an executable nats-server >= $MIN_MAJOR.$MIN_MINOR; trying others"
fi

if command -v nats-server >/dev/null 2>&1 && version_ok "$(command -v nats-server)"; then
  command -v nats-server
  exit 0
fi

if [ -x "$bin" ] && version_ok "$bin"; then
  echo "$bin"
  exit 0
fi

how_to="Install nats-server >= $MIN_MAJOR.$MIN_MINOR (https://docs.nats.io/running-a-nats-service/introduction/installation) and put it on PATH or set NATS_SERVER_BIN, or point jetflow at a running server with NATS_URL."

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
  log "no usable nats-server found and this is not a Debian-like machine."
  log "$how_to"
  exit 1
fi

# The machine's own Debian mirror: the first URI serving a plain Debian suite (not -security).
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  mirror="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")"
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    mirror="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) print $i; exit } }' "$f" | head -n1)"
    [ -n "$mirror" ] && break
  done
fi
if [ -z "$mirror" ]; then
  log "could not find a Debian mirror in /etc/apt/sources.list{,.d}."
  log "$how_to"
  exit 1
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed=""
[ -f "$keyring" ] && signed="[signed-by=$keyring]"

log "fetching Debian unstable's nats-server package through this machine's Debian mirror (one time)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/parts" "$work/prefs"
echo "deb $signed $mirror sid main" >"$work/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=$work/parts"
  -o "Dir::Etc::PreferencesParts=$work/prefs"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Dir::State::status=/dev/null"
  -o "Debug::NoLocking=1"
  -o "APT::Architecture=$(dpkg --print-architecture)"
  -o "Acquire::Languages=none"
  -o "APT::Sandbox::User=root"
)
if ! apt-get "${apt_opts[@]}" -qq update >&2; then
  log "apt-get update against suite sid failed."
  log "$how_to"
  exit 1
fi
(cd "$work" && apt-get "${apt_opts[@]}" -qq download nats-server >&2) || {
  log "apt-get download nats-server failed."
  log "$how_to"
  exit 1
}
deb="$(ls "$work"/nats-server_*.deb | head -n1)"
rm -rf "$dest/root"
mkdir -p "$dest/root"
dpkg -x "$deb" "$dest/root"
if [ -x "$bin" ] && version_ok "$bin"; then
  log "installed $("$bin" --version) into .nats/"
  echo "$bin"
  exit 0
fi
log "the downloaded package did not contain a usable nats-server."
log "$how_to"
exit 1
