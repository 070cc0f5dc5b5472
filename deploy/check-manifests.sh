#!/usr/bin/env bash
# Offline validation of everything under deploy/: shell scripts parse, JSON parses,
# YAML parses (PyYAML) and Kubernetes/compose manifests carry their required fields.
set -euo pipefail
cd "$(dirname "$0")"
fail=0
for f in $(find . -name '*.sh'); do
  bash -n "$f" || { echo "check-manifests: $f does not parse"; fail=1; }
done
for f in $(find . ../shared/schemas -name '*.json'); do
  python3 -m json.tool "$f" >/dev/null || { echo "check-manifests: $f is not JSON"; fail=1; }
done
if [ -x ./check_manifests.py ]; then
  ./check_manifests.py || fail=1
  # Proves the checker still catches broken manifests (each of a set of mutations).
  ./check_manifests.py --self-test || fail=1
fi
[ "$fail" -eq 0 ] && echo "check-manifests: ok"
exit "$fail"
