#!/usr/bin/env bash
# Create (or update) .venv in this checkout with lpmace installed editable, its test tools, torchao
# (quantized readouts) and mace-torch for the interop tests and `lpmace convert`. The README's
# commands and .ci/run both start with this script, so they cannot drift apart. Safe to run again.
#
#   PYTHON=python3.12 scripts/setup.sh     # pick the interpreter (default: python3, >= 3.11)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# Skip the installs when nothing they depend on changed since the last successful run.
stamp=.venv/lpmace-setup.stamp
inputs=$(cat pyproject.toml requirements-interop.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
    echo "setup: .venv is up to date"
    exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
pip() { .venv/bin/python -m pip "$@"; }

# A torch already in .venv (a CPU or CUDA build installed by hand) is kept. Otherwise torch 2.13.0:
# on the CI machine that is a CPU wheel on local disk (pip's find-links), where a plain `torch` would
# pull a multi-GB CUDA build. Elsewhere, for a CPU-only torch, first run
#   .venv/bin/python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    pip install torch==2.13.0
fi
pip install -e '.[test,quant]'
pip install -r requirements-interop.txt
pip install --no-deps mace-torch==0.3.16
.venv/bin/python -c "import lpmace, mace.modules; print('setup: lpmace', lpmace.__version__, 'ready in .venv')"
echo "$inputs" > "$stamp"
