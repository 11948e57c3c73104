#!/usr/bin/env bash
# Source changes applied to every pycaffe build (CPU and CUDA) of the
# brocolli-caffe sdist, before `make`:
#
#   scripts/patch_caffe_source.sh SRC
#
# It edits only the throw-away copy in SRC (never anything committed).
#   1. src/caffe/util/io.cpp caps a binary protobuf read at 512 MiB (536870912
#      bytes) in ReadProtoFromBinaryFile and ReadProtoFromBinaryMemory. BVLC
#      Caffe reads up to INT_MAX bytes (2 GiB - 1, protobuf's own hard limit), and
#      the public weights of VGG16/VGG19/VGG-Face (528-575 MB) and FCN-8s are
#      over 512 MiB: with the fork's cap, `caffe.Net(..., weights)` aborts the
#      process. The patch sets the cap to INT_MAX, as BVLC Caffe does.
# build_pycaffe.sh keys the cached wheel on this file's hash, so a changed patch
# builds a new wheel.
set -euo pipefail
SRC=${1:?usage: patch_caffe_source.sh SRC}
python3 - "$SRC" <<'PY'
import pathlib, sys
path = pathlib.Path(sys.argv[1], "src/caffe/util/io.cpp")
text = path.read_text()
old = "coded_input->SetTotalBytesLimit(536870912);"
found = text.count(old)
if found != 2:
    sys.exit(f"patch_caffe_source: {path}: expected 2 of {old!r}, found {found}")
text = text.replace(old, "coded_input->SetTotalBytesLimit(INT_MAX);  // 2 GiB - 1, as BVLC Caffe")
if "#include <climits>" not in text:
    text = "#include <climits>\n" + text
path.write_text(text)
PY
echo "patch_caffe_source: $SRC: protobuf read limit 512 MiB -> INT_MAX (2 GiB - 1)" >&2
