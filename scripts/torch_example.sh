#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
#
# The PyTorch adapter (examples/torch/): installs what it needs (Debian packages through
# install-deps.sh, python3-venv; PyTorch from PyPI into a virtual environment, about 4 GB with
# its CUDA libraries), builds polo's operators against it on first import, and runs their
# tests (eager PyTorch references, autograd, torch.library.opcheck, errors).
#   Usage: scripts/torch_example.sh          (VENV=dir picks the environment, default .venv-torch;
#                                             TORCH_SPEC="torch==2.11.0" pins a version)
# Not part of scripts/test.sh: CI stays free of the PyTorch download.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh python3-venv python3-dev
venv=${VENV:-.venv-torch}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
venv=$(cd "$venv" && pwd)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "polo: installing ${TORCH_SPEC:-torch} and numpy from PyPI into $venv" >&2
  "$venv/bin/pip" install -q "${TORCH_SPEC:-torch}" numpy
fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch_extensions}
cd examples/torch
exec "$venv/bin/python" test_polo_ops.py
