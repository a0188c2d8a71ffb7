#!/usr/bin/env bash
# Install LiteLLM's proxy into benchmarks/.venv-litellm: a benchmark-only dependency, kept out of
# sluiceway's own venv (it pins many packages of its own). Idempotent: does nothing when the wanted
# version is already there. LITELLM_VERSION overrides the version compared against.
set -euo pipefail
cd "$(dirname "$0")"
VERSION="${LITELLM_VERSION:-1.108.7}"
VENV=.venv-litellm
installed() {
  [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" - "$VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("litellm") == sys.argv[1] else 1)
PY
}
if installed; then
  echo "litellm $VERSION already in benchmarks/$VENV"
  exit 0
fi
BASE_PYTHON="$(../.venv/bin/python -c 'import sys; print(sys.base_prefix)')/bin/python3"
echo "installing litellm[proxy]==$VERSION into benchmarks/$VENV (a few minutes on a cold cache) ..."
"$BASE_PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$VERSION"
installed
echo "litellm $VERSION installed"
