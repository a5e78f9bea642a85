#!/usr/bin/env bash
# The main job: installs ice-tf into a fresh virtual environment and runs the demo on
# the embedded benchmark (plain CE, OE, Energy and ICE with the same backbone and
# budget; a Table-1-style comparison at the end). Extra arguments go to compare.py,
# e.g. `bash scripts/run_demo.sh --seeds=1,2,3`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-demo
. .venv-demo/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -r requirements/cpu.txt
python -m pip install --quiet --no-deps -e .
export TF_CPP_MIN_LOG_LEVEL=2
ice-tf demo "$@"
