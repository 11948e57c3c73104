#!/usr/bin/env bash
# The peers' virtual environment: the tools researchers feed a converted model to, installed from PyPI
# as their users install them, for tests/test_engines_peers.py and benchmarks/bench_peers.py. Prints the path of
# its python on the last line.
#
# Why not the project's .venv: none of them can be installed beside its pins.
#   - thingsvision 2.7.3 pins torchvision==0.15.2 (so torch 2.0.1), numpy<2 and tensorflow<2.16, and
#     imports tensorflow, timm and torchtyping when it is imported;
#   - Brain-Score (brainscore-vision 2.4.2, brainscore-core 2.5.0) pins numpy<2 and xarray<2022.6
#     (the project's export extra needs xarray>=2023.1);
#   - torchvision's PyPI wheels link libtorch_cuda, so they do not import beside the CPU build of torch
#     that scripts/setup.sh installs.
# So: its own venv, with PyPI's (CUDA) build of torch 2.14.1 and torchvision 0.29.1 (a pair; on a
# machine without a GPU they run on the CPU), numpy<2, brainscore-vision, torchlens, thingsvision's
# import-time dependencies as thingsvision pins them (tensorflow-cpu<2.16, safetensors<0.6), and
# thingsvision itself installed --no-deps: its torchvision==0.15.2 pin would pull torch 2.0.1, which
# the tests do not need (its extractor code is the same). savedeep is not installed there: the tests
# put the clone on PYTHONPATH, with savedeep's own runtime dependencies installed here (pyarrow below 20:
# later releases need numpy 2).
#
# Cached in ~/.cache/savedeep/peers-KEY (KEY: this file's sha256), one builder at a time (flock); a
# build counts once it wrote .complete (an interrupted one is redone). About 8 GB (most of it torch's CUDA
# libraries); the first build takes a few minutes, later calls return at once.
#
# Usage: scripts/peer_env.sh [--print-path]
set -euo pipefail

PY_BASE=${SAVEDEEP_PYTHON:-python3.11}
KEY=$(sha256sum "$0" | cut -c1-12)
CACHE=${SAVEDEEP_CACHE:-$HOME/.cache/savedeep}
VENV="$CACHE/peers-$KEY"
say() { echo "[peer_env] $*" >&2; }

if [ "${1:-}" = "--print-path" ]; then echo "$VENV/bin/python"; exit 0; fi
mkdir -p "$CACHE"
exec 9>"$VENV.lock"
flock 9
if [ -f "$VENV/.complete" ]; then
  echo "$VENV/bin/python"
  exit 0
fi


rm -rf "$VENV"
say "building $VENV (thingsvision, torchlens, brainscore-vision, torchvision from PyPI; a few minutes)"
"$PY_BASE" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
PINS=("torch==2.14.1" "torchvision==0.29.1" "numpy>=1.26,<2")
pip_install "${PINS[@]}"
pip_install "${PINS[@]}" \
  "brainscore-vision==2.4.2" "torchlens==2.36.1" \
  "tensorflow-cpu>=2.15,<2.16" "timm>=1.0" "torchtyping>=0.1.4" "safetensors<0.6" ftfy regex h5py \
  "pandas>=2.0,<3" "pyarrow>=15,<20" "pyyaml>=6" "tqdm>=4.60" "pillow>=10" "opencv-python-headless>=4.8,<5" \
  "simplejpeg>=1.7"
pip_install --no-deps "thingsvision==2.7.3"
"$VENV/bin/python" -c "import thingsvision, torchlens, torchvision
from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper"
touch "$VENV/.complete"
say "done: $VENV"
echo "$VENV/bin/python"
