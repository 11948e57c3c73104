#!/usr/bin/env bash
# Prepare an unpacked brocolli-caffe sdist tree for a CUDA build.
# Called by build_pycaffe.sh --cuda after it wrote Makefile.config (without
# CPU_ONLY) and before `make`:
#
#   scripts/patch_caffe_cuda.sh SRC PYTHON [sm_XX]
#
# It edits only the throw-away copy in SRC (never anything committed):
#   1. cuBLAS and cuRAND: this kind of machine's CUDA (/usr/local/cuda, CUDA 13)
#      has cudart but no cuBLAS/cuRAND. Their headers and libraries come from
#      the PyPI wheels nvidia-cublas and nvidia-curand (version- and, on x86_64,
#      sha256-pinned below). The wheels are downloaded once into
#      $SAVEDEEP_CACHE/cuda-wheels and unpacked into SRC/.savedeep-cuda, where
#      the unversioned libcublas.so/libcurand.so symlinks the linker needs are
#      made (the wheels ship only libcublas.so.13 and libcurand.so.10).
#   2. Makefile.config: CUDA_DIR, CUDA_ARCH (sm_75 and newer: CUDA 13 dropped
#      older architectures), include/library dirs, run-time search paths.
#   3. Source fixes, all of them needed for nvcc 13 to compile and link:
#      - src/caffe/common.cpp prints three cudaDeviceProp fields that CUDA 13
#        removed (clockRate, deviceOverlap, kernelExecTimeoutEnabled): under
#        CUDART_VERSION >= 13000 print the same facts from
#        cudaDeviceGetAttribute / asyncEngineCount instead.
#      - ProposalLayer declares Backward_gpu, never defines it, yet
#        proposal_layer.cu instantiates it (INSTANTIATE_LAYER_GPU_FUNCS): give
#        it the same empty body as its Backward_cpu and instantiate Forward_gpu
#        only.
#      - HardSigmoid, HardSwish, MaxUnPool, PixelShuffle, ReLU6 and Upsample
#        declare Forward_gpu/Backward_gpu but have no .cu file: drop the
#        declarations so that Layer's defaults run their CPU code (in GPU mode
#        these layers then compute on the CPU, with blob copies around them).
#   4. Writes SRC/savedeep-requires.txt: the run-time requirements that
#      build_pycaffe.sh adds to the wheel's metadata (see "Run time" below).
#
# Run time: libcaffe links libcudart.so.13, libcublas.so.13 and libcurand.so.10
# dynamically. The wheel does not bundle them (cuBLAS alone is ~600 MB); it
# declares Requires-Dist on nvidia-cublas, nvidia-curand and nvidia-cuda-runtime
# (CUDA 13 series) and both _caffe.so and libcaffe carry the RUNPATH
# $ORIGIN/../nvidia/cu13/lib, which is where those wheels put their libraries
# in the same site-packages (caffe/ and nvidia/ are siblings). Installing the
# caffe wheel with --no-deps therefore needs those three installed by hand.
# LD_LIBRARY_PATH (e.g. a system CUDA 13 with cuBLAS) still works as usual.
# The NVIDIA driver (libcuda.so.1) is not needed to import caffe or to run it
# in CPU mode.
set -euo pipefail

SRC=${1:?usage: patch_caffe_cuda.sh SRC PYTHON [sm_XX]}
PY=${2:?usage: patch_caffe_cuda.sh SRC PYTHON [sm_XX]}
ARCH=${3:-}

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
CACHE=${SAVEDEEP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/savedeep}

# Build-time wheels, matched to CUDA 13.0 (the nvcc here). Any CUDA 13.x
# cuBLAS/cuRAND works at run time (CUDA minor-version compatibility), hence the
# looser ranges in the wheel's requirements.
CUBLAS_VERSION=13.0.2.14
CUBLAS_SHA256_X86_64=0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c
CURAND_VERSION=10.4.0.35
CURAND_SHA256_X86_64=1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
RUNTIME_REQUIRES=("nvidia-cublas>=13,<14" "nvidia-curand>=10.4,<11" "nvidia-cuda-runtime>=13,<14")
# Where those wheels put their libraries, relative to site-packages/caffe/.
RUNTIME_LIBDIR_FROM_CAFFE=../nvidia/cu13/lib

say() { echo "patch_caffe_cuda: $*" >&2; }
die() { say "$*"; exit 1; }

[ -f "$SRC/Makefile" ] && [ -f "$SRC/Makefile.config" ] || die "$SRC is not a configured caffe tree"
[ -x "$CUDA_HOME/bin/nvcc" ] || die "no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)"
CUDA_RELEASE=$("$CUDA_HOME/bin/nvcc" --version | grep -o 'release [0-9.]*' | cut -d' ' -f2)
[ "${CUDA_RELEASE%%.*}" = 13 ] || die "nvcc is CUDA $CUDA_RELEASE; this build is set up for CUDA 13 (cuBLAS 13 / cuRAND 10.4 wheels)"
[ -e "$CUDA_HOME/include/cuda_runtime.h" ] || die "no cuda_runtime.h under $CUDA_HOME/include"

# CUDA_ARCH (checked first: a bad --arch fails before any download).
if [ -n "$ARCH" ]; then
  [[ "$ARCH" =~ ^sm_([0-9]+)$ ]] || die "--arch wants sm_XX (e.g. sm_86), got $ARCH"
  n=${BASH_REMATCH[1]}
  [ "$n" -ge 75 ] || die "$ARCH: CUDA 13 supports sm_75 and newer only"
  # SASS for that GPU plus its PTX (JIT-compiled on newer GPUs).
  CUDA_ARCH="-gencode arch=compute_$n,code=sm_$n -gencode arch=compute_$n,code=compute_$n"
else
  # Turing, Ampere (A100, RTX 30), Ada (L4, RTX 40), Hopper (H100/H200), plus
  # compute_90 PTX that newer GPUs (Blackwell) JIT-compile on first use.
  CUDA_ARCH=""
  for n in 75 80 86 89 90; do
    CUDA_ARCH+="-gencode arch=compute_$n,code=sm_$n "
  done
  CUDA_ARCH+="-gencode arch=compute_90,code=compute_90"
fi

# 1. cuBLAS / cuRAND from PyPI wheels -----------------------------------------
WHEELS="$CACHE/cuda-wheels"
DEPS="$SRC/.savedeep-cuda"
mkdir -p "$WHEELS" "$DEPS/lib" "$DEPS/include"

fetch_wheel() {  # NAME VERSION SHA256(x86_64) -> prints the wheel's path
  local name=$1 version=$2 sha=$3 file
  file=$(ls "$WHEELS/${name//-/_}-$version-"*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$file" ]; then
    say "downloading $name==$version"
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: "$name==$version" -d "$WHEELS" >&2
    file=$(ls "$WHEELS/${name//-/_}-$version-"*.whl | head -n 1)
  fi
  if [ "$(uname -m)" = x86_64 ]; then
    echo "$sha  $file" | sha256sum -c --status \
      || die "$file does not have sha256 $sha; delete it and retry"
  else
    say "note: no pinned sha256 for $name on $(uname -m); not checked"
  fi
  echo "$file"
}

unpack_wheel() {  # WHEEL: its nvidia/cu13/{include,lib} into $DEPS
  "$PY" - "$1" "$DEPS" <<'PYEOF'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
n = 0
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        parts = info.filename.split("/")
        if len(parts) < 4 or parts[0] != "nvidia" or parts[2] not in ("include", "lib"):
            continue
        if info.is_dir() or ".." in parts:
            continue
        out = os.path.join(dest, *parts[2:])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with zf.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(out, 0o755 if parts[2] == "lib" else 0o644)
        n += 1
if not n:
    sys.exit(f"{wheel}: no nvidia/*/include or lib files")
PYEOF
}

# (Assignments, so that set -e stops on a failed download or hash check.)
CUBLAS_WHEEL=$(fetch_wheel nvidia-cublas "$CUBLAS_VERSION" "$CUBLAS_SHA256_X86_64")
CURAND_WHEEL=$(fetch_wheel nvidia-curand "$CURAND_VERSION" "$CURAND_SHA256_X86_64")
unpack_wheel "$CUBLAS_WHEEL"
unpack_wheel "$CURAND_WHEEL"
for h in cublas_v2.h curand.h; do
  [ -f "$DEPS/include/$h" ] || die "$h missing from the unpacked wheels"
done
# The linker wants libNAME.so; the wheels ship only the versioned files.
for base in cublas cublasLt curand; do
  lib=$(cd "$DEPS/lib" && ls "lib$base.so."* 2>/dev/null | sort | head -n 1 || true)
  [ -n "$lib" ] || die "lib$base.so.* missing from the unpacked wheels"
  ln -sf "$lib" "$DEPS/lib/lib$base.so"
done

# 2. Makefile.config -----------------------------------------------------------
# CPU_ONLY must not be set for a GPU build (build_pycaffe.sh writes it only for
# cpu; be sure), and cuDNN is not used.
sed -i -e '/^[[:space:]]*CPU_ONLY[[:space:]]*:\?=/d' -e '/^[[:space:]]*USE_CUDNN[[:space:]]*:\?=/d' \
    "$SRC/Makefile.config"
{
  echo "# --- CUDA (scripts/patch_caffe_cuda.sh) ---"
  echo "USE_CUDNN := 0"
  echo "CUDA_DIR := $CUDA_HOME"
  echo "CUDA_ARCH := $CUDA_ARCH"
  echo "INCLUDE_DIRS += $DEPS/include"
  echo "LIBRARY_DIRS += $DEPS/lib"
  # libcublas.so.13 needs libcublasLt.so.13 next to it at link time.
  echo "LINKFLAGS += -Wl,-rpath-link,$DEPS/lib"
  # \$$ is what Makefile.config's own $ORIGIN rpath uses: make turns $$ into $,
  # and the backslash keeps the shell from expanding $ORIGIN.
  printf 'LINKFLAGS += -Wl,-rpath,\\$$ORIGIN/%s\n' "$RUNTIME_LIBDIR_FROM_CAFFE"
} >> "$SRC/Makefile.config"

# 3. Source fixes ----------------------------------------------------------------
"$PY" - "$SRC" <<'PYEOF'
import re, sys
from pathlib import Path

src = Path(sys.argv[1])


def edit(rel, old, new, count=1):
    path = src / rel
    text = path.read_text()
    found = text.count(old)
    if found != count:
        sys.exit(f"patch_caffe_cuda: {rel}: expected {count} of {old!r}, found {found}")
    path.write_text(text.replace(old, new))


# cudaDeviceProp fields removed in CUDA 13.
edit("src/caffe/common.cpp",
     '  LOG(INFO) << "Clock rate:                    " << prop.clockRate;\n',
     '#if CUDART_VERSION < 13000\n'
     '  LOG(INFO) << "Clock rate:                    " << prop.clockRate;\n'
     '#else\n'
     '  {\n'
     '    int clock_rate = 0;\n'
     '    cudaDeviceGetAttribute(&clock_rate, cudaDevAttrClockRate, device);\n'
     '    LOG(INFO) << "Clock rate:                    " << clock_rate;\n'
     '  }\n'
     '#endif\n')
edit("src/caffe/common.cpp",
     '      << (prop.deviceOverlap ? "Yes" : "No");\n',
     '#if CUDART_VERSION < 13000\n'
     '      << (prop.deviceOverlap ? "Yes" : "No");\n'
     '#else\n'
     '      << (prop.asyncEngineCount > 0 ? "Yes" : "No");\n'
     '#endif\n')
edit("src/caffe/common.cpp",
     '      << (prop.kernelExecTimeoutEnabled ? "Yes" : "No");\n',
     '#if CUDART_VERSION < 13000\n'
     '      << (prop.kernelExecTimeoutEnabled ? "Yes" : "No");\n'
     '#else\n'
     '      << [device]() { int timeout = 0;\n'
     '           cudaDeviceGetAttribute(&timeout, cudaDevAttrKernelExecTimeout, device);\n'
     '           return timeout ? "Yes" : "No"; }();\n'
     '#endif\n')

# ProposalLayer: Backward_gpu declared and instantiated but never defined.
edit("include/caffe/layers/proposal_layer.hpp",
     "  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,\n"
     "      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);\n",
     "  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,\n"
     "      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {}\n")
edit("src/caffe/layers/proposal_layer.cu",
     "INSTANTIATE_LAYER_GPU_FUNCS(ProposalLayer);",
     "INSTANTIATE_LAYER_GPU_FORWARD(ProposalLayer);")

# Fork layers declaring GPU functions that no .cu file defines: drop the
# declarations so Layer::Forward_gpu/Backward_gpu fall back to the CPU code.
decl = re.compile(r"[ \t]*virtual\s+void\s+(?:Forward|Backward)_gpu\s*\([^;{}]*\)\s*;[ \t]*\n")
for name in ("hardsigmoid", "hardswish", "maxunpool", "pixelshuffle", "relu6", "upsample"):
    if list((src / "src/caffe/layers").glob(f"{name}_layer.cu")):
        sys.exit(f"patch_caffe_cuda: {name}_layer.cu exists; this patch expects none")
    path = src / f"include/caffe/layers/{name}_layer.hpp"
    text, n = decl.subn("", path.read_text())
    if n != 2:
        sys.exit(f"patch_caffe_cuda: {path.name}: expected 2 GPU declarations, found {n}")
    path.write_text(text)
PYEOF

# 4. Run-time requirements for the wheel's metadata ---------------------------------
printf '%s\n' "${RUNTIME_REQUIRES[@]}" > "$SRC/savedeep-requires.txt"

say "CUDA $CUDA_RELEASE, arch: $CUDA_ARCH"
