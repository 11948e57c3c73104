#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py for the steps and verdicts):
#
#   bash benchmarks/gpu_check.sh                 # on a GPU machine: every step must say PASS
#   bash benchmarks/gpu_check.sh --device cpu    # the dry run here: runs what the CPU allows, says what it cannot check
#
# On a bare GPU machine (Python 3.12 + PyTorch, none of this project's set-up), first run
# `bash benchmarks/gpu_pack.sh` here and carry ".gpu" (the open_nsfw model and the wheels of
# simplejpeg, pytest and the few packages such a machine lacks); this script installs those
# wheels into a temporary directory, never into the system. Where $OUT is set (the device
# machine's output folder), the verdicts (gpu_check.json) and bench_gpu.py's gpu.json go there too.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$PY" = python3 ] && [ -d .gpu/whl ]; then
  SITE=${TMPDIR:-/tmp}/savedeep-gpu-site
  "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --upgrade --target "$SITE" .gpu/whl/*.whl \
    || { echo "gpu_check.sh: installing .gpu/whl failed" >&2; exit 2; }
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
export PYTHONUNBUFFERED=1
args=("$@")
[ -n "${OUT:-}" ] && args+=(--copy-to "$OUT")
exec "$PY" benchmarks/gpu_check.py "${args[@]}"
