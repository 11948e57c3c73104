#!/usr/bin/env bash
# Build pycaffe from the sha256-pinned brocolli-caffe sdist into a wheel, and
# cache the wheel outside the clone, keyed by sdist hash, Python version and
# flavour (cpu|cuda; for cuda also the GPU arch and the CUDA patch's hash).
# Prints the wheel's path on its last line of stdout.
#
#   scripts/build_pycaffe.sh PYTHON [--cuda] [--arch sm_XX]
#
# PYTHON is the interpreter of the virtualenv the wheel is for (it must have
# numpy >= 2 installed: pycaffe compiled against numpy 2 headers imports under
# numpy 1.26 and 2.x; the reverse is not true).
# Environment: SAVEDEEP_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/savedeep),
# JOBS (default: nproc), CUDA_HOME (default /usr/local/cuda) for --cuda.
set -euo pipefail

SDIST_NAME=brocolli-caffe
SDIST_VERSION=9.0.2
SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a

PY=${1:?usage: build_pycaffe.sh PYTHON [--cuda] [--arch sm_XX]}
shift
FLAVOUR=cpu
ARCH=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) FLAVOUR=cuda ;;
    --arch) ARCH=$2; shift ;;
    *) echo "build_pycaffe.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${SAVEDEEP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/savedeep}
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# Every wheel depends on patch_caffe_source.sh, a CUDA wheel also on patch_caffe_cuda.sh: a
# changed patch must not reuse an old wheel.
PATCH_TAG="-s$(sha256sum "$HERE/patch_caffe_source.sh" | cut -c1-12)"
if [ "$FLAVOUR" = cuda ]; then
  PATCH_TAG="$PATCH_TAG-p$(sha256sum "$HERE/patch_caffe_cuda.sh" | cut -c1-12)"
fi
KEY="${SDIST_SHA256:0:16}-${PYTAG}-${FLAVOUR}${ARCH:+-$ARCH}${PATCH_TAG}"
WHEEL_DIR="$CACHE/pycaffe/$KEY"
WHEEL_NAME="caffe-1.0.0+brocolli${SDIST_VERSION//./}.${FLAVOUR}-${PYTAG}-${PYTAG}-linux_$(uname -m).whl"

if [ -f "$WHEEL_DIR/$WHEEL_NAME" ]; then
  echo "pycaffe: cached wheel $WHEEL_DIR/$WHEEL_NAME" >&2
  echo "$WHEEL_DIR/$WHEEL_NAME"
  exit 0
fi

mkdir -p "$CACHE/sdist" "$WHEEL_DIR"
SDIST="$CACHE/sdist/$SDIST_NAME-$SDIST_VERSION.tar.gz"
if [ ! -f "$SDIST" ] || ! echo "$SDIST_SHA256  $SDIST" | sha256sum -c --status; then
  echo "pycaffe: downloading the $SDIST_NAME==$SDIST_VERSION sdist" >&2
  tmpd=$(mktemp -d)
  "$PY" -m pip download --quiet --no-deps --no-binary :all: \
      "$SDIST_NAME==$SDIST_VERSION" -d "$tmpd" >&2
  mv "$tmpd/$SDIST_NAME-$SDIST_VERSION.tar.gz" "$SDIST"
  rm -rf "$tmpd"
fi
if ! echo "$SDIST_SHA256  $SDIST" | sha256sum -c --status; then
  echo "pycaffe: $SDIST does not have sha256 $SDIST_SHA256; delete it and retry" >&2
  exit 1
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/savedeep-pycaffe.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
tar xzf "$SDIST" -C "$WORK"
SRC="$WORK/$SDIST_NAME-$SDIST_VERSION"
# The sdist carries a .git directory with someone's credentials: drop it unread.
rm -rf "$SRC/.git"
# Generated protobuf files from an old protoc: regenerate with ours.
rm -f "$SRC/include/caffe/proto/caffe.pb.h" "$SRC/src/caffe/proto/caffe.pb.cc" \
      "$SRC/python/caffe/proto/caffe_pb2.py"

PYINC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$PY" -c 'import numpy; print(numpy.get_include())')
OPENBLAS_INC=/usr/include/$(gcc -print-multiarch)/openblas-pthread
HDF5_INC=/usr/include/hdf5/serial
HDF5_LIB=/usr/lib/$(gcc -print-multiarch)/hdf5/serial

{
  echo "USE_CUDNN := 0"
  echo "USE_OPENCV := 0"
  echo "USE_LEVELDB := 0"
  echo "USE_LMDB := 0"
  echo "BLAS := open"
  echo "BLAS_INCLUDE := $OPENBLAS_INC"
  echo "PYTHON_INCLUDE := $PYINC $NPINC"
  echo "PYTHON_LIBRARIES := boost_python${PYTAG#cp}"
  echo "WITH_PYTHON_LAYER := 1"
  echo "INCLUDE_DIRS := \$(PYTHON_INCLUDE) /usr/local/include $HDF5_INC"
  echo "LIBRARY_DIRS := /usr/local/lib /usr/lib $HDF5_LIB"
  # _caffe.so and libcaffe.so are shipped side by side in the wheel.
  echo 'LINKFLAGS += -Wl,-rpath,\$$ORIGIN'
  echo "Q ?= @"
} > "$SRC/Makefile.config"
bash "$HERE/patch_caffe_source.sh" "$SRC"

if [ "$FLAVOUR" = cpu ]; then
  echo "CPU_ONLY := 1" >> "$SRC/Makefile.config"
else
  bash "$HERE/patch_caffe_cuda.sh" "$SRC" "$PY" "${ARCH:-}" >&2
fi

JOBS=${JOBS:-$(nproc)}
echo "pycaffe: compiling ($FLAVOUR, -j$JOBS); this takes minutes once, then the wheel is cached" >&2
(
  cd "$SRC"
  make proto >&2
  make -j"$JOBS" lib >&2
  make -j"$JOBS" pycaffe >&2
)

# Lay out the package: python/caffe plus libcaffe next to _caffe.so.
STAGE="$WORK/stage"
mkdir -p "$STAGE"
cp -r "$SRC/python/caffe" "$STAGE/caffe"
rm -rf "$STAGE/caffe/test" "$STAGE/caffe/__pycache__" "$STAGE/caffe/_caffe.cpp" "$STAGE/caffe/imagenet"
find "$STAGE" -name '__pycache__' -prune -exec rm -rf {} +
cp -L "$SRC"/.temp_release/lib/libcaffe.so.* "$STAGE/caffe/"
REQUIRES=(--requires numpy --requires "protobuf>=3.20" --requires scikit-image --requires scipy --requires six)
if [ "$FLAVOUR" = cuda ]; then
  # cuBLAS/cuRAND/cudart are not bundled: the wheel requires the nvidia-* wheels
  # (found through the $ORIGIN/../nvidia/cu13/lib RUNPATH; see patch_caffe_cuda.sh).
  while read -r req; do
    if [ -n "$req" ]; then REQUIRES+=(--requires "$req"); fi
  done < "$SRC/savedeep-requires.txt"
fi
"$PY" "$HERE/make_wheel.py" "$STAGE" "$WHEEL_DIR/$WHEEL_NAME" \
    --name caffe --version "1.0.0+brocolli${SDIST_VERSION//./}.${FLAVOUR}" "${REQUIRES[@]}" >&2
echo "pycaffe: wheel cached at $WHEEL_DIR/$WHEEL_NAME" >&2
echo "$WHEEL_DIR/$WHEEL_NAME"
