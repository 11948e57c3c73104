#!/usr/bin/env bash
# Pack what benchmarks/bench_gpu.py needs on a GPU machine that has neither ../shared nor this
# project's set-up into .gpu/ (ignored by git, through .git/info/exclude): CaffeNet's deploy.prototxt,
# the ILSVRC-2012 mean, the shared photos, the open_nsfw model directory, and the simplejpeg wheel
# for the lent machines' Python 3.12. About 26 MB: carry ".gpu" with the device run (see
# bench_gpu.py's docstring for the command).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared
[ -d "$shared/models/caffenet" ] || { echo "gpu_pack.sh: $shared/models/caffenet is missing" >&2; exit 2; }
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu
mkdir -p .gpu/shared/models/caffenet .gpu/shared/images .gpu/whl
cp "$shared/models/caffenet/deploy.prototxt" .gpu/shared/models/caffenet/
cp "$shared/models/ilsvrc_2012_mean.npy" .gpu/shared/models/
cp "$shared"/images/*.jpg .gpu/shared/images/
.venv/bin/python -c "from pathlib import Path; from savedeep.demo import prepare_model; prepare_model(Path('.gpu/shared/nsfw'))"
simplejpeg=$(.venv/bin/python -c "import simplejpeg; print(simplejpeg.__version__)")
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl "simplejpeg==$simplejpeg" 2> >(grep -v "^WARNING: Location" >&2)
du -sh .gpu
