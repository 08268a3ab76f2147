#!/usr/bin/env bash
# Installs the LiteLLM proxy CLI into its own cached venv (never the project venv), for the test that validates
# gpumix's LiteLLM export with LiteLLM's own loader (`litellm --config F --validate_config`).
# litellm 1.109.1 declares certifi>=2026.10.19 and litellm-proxy-extras==0.4.113, newer than this machine's package
# index has; neither is on the config-validation path, so its requirements are pinned here (scripts/
# litellm-requirements.txt, frozen from a working install) and litellm itself goes in with --no-deps.
set -euo pipefail
VENV="${GPUMIX_LITELLM_VENV:-$HOME/.cache/gpumix/litellm-venv}"
PYTHON="${PYTHON:-python3.11}"
if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "import litellm" 2>/dev/null; then
  exit 0
fi
echo "installing LiteLLM 1.109.1 into $VENV (once; used to validate the litellm export)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$(dirname "$0")/litellm-requirements.txt"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps litellm==1.109.1
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --help >/dev/null
