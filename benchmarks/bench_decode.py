"""Images per second per core for decoding + preprocessing JPEGs to a 227x227 input blob.

Compares, in one process on one core (cv2.setNumThreads(1), OpenBLAS at 1 thread):

- ``skimage/caffe.io``: skimage.io.imread, img_as_float, caffe.io.resize_image, transpose,
  channel swap, scale, mean (what a pycaffe script does);
- ``Pillow``: Image.open + convert('RGB') + bilinear resize + the float steps;
- ``OpenCV``: cv2.imread + cv2.resize(INTER_LINEAR) + the float steps;
- ``simplejpeg+cv2``: savedeep's default path (Preprocessor.load);
- ``draft``: savedeep with jpeg_draft=True (DCT-domain downscaling; changes the numbers).

The JPEGs are made from real photos (tests/data/images and scikit-image's), resized to
about 500x375 and 3000x2000, quality 90. Writes benchmarks/out/decode.json.

Usage: python benchmarks/bench_decode.py [--seconds 2.0] [--out benchmarks/out/decode.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402
from PIL import Image  # noqa: E402

from savedeep.data.preprocess import PreprocessSpec, Preprocessor, _caffe_resize_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 227, 227)
MEAN = np.array([104.0, 117.0, 123.0], np.float32).reshape(3, 1, 1)
SIZES = {"500x375": (500, 375), "3000x2000": (3000, 2000)}


def source_photos() -> list[Path]:
    """Real photos: the JPEGs in tests/data and scikit-image's colour photos."""
    carried = sorted((ROOT / "tests" / "data" / "images").glob("*.jpg"))
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        extra = [
            data / n
            for n in (
                "astronaut.png",
                "chelsea.png",
                "coffee.png",
                "motorcycle_left.png",
                "rocket.jpg",
                "hubble_deep_field.jpg",
            )
        ]
    except ImportError:
        extra = []
    return carried + [p for p in extra if p.exists()]


def make_jpegs(directory: Path, size: tuple[int, int]) -> list[Path]:
    """Resize every photo to `size` and save it as a quality-90 JPEG."""
    out = []
    for i, src in enumerate(source_photos()):
        path = directory / f"{i:02d}_{size[0]}x{size[1]}.jpg"
        Image.open(src).convert("RGB").resize(size, Image.LANCZOS).save(path, quality=90)
        out.append(path)
    return out


def _float_steps(rgb_u8: np.ndarray) -> np.ndarray:
    x = (rgb_u8.astype(np.float32) / 255).transpose(2, 0, 1)[::-1] * 255
    return x - MEAN


def skimage_caffe_io(path: Path) -> np.ndarray:
    import skimage
    import skimage.io

    img = skimage.img_as_float(skimage.io.imread(path)).astype(np.float32)
    img = _caffe_resize_image(img, SHAPE[1:])
    return img.transpose(2, 0, 1)[::-1] * 255 - MEAN


def pillow(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB").resize((SHAPE[2], SHAPE[1]), Image.BILINEAR))
    return _float_steps(rgb)


def opencv(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    bgr = cv2.resize(bgr, (SHAPE[2], SHAPE[1]), interpolation=cv2.INTER_LINEAR)
    return _float_steps(bgr[:, :, ::-1])


def measure(fn: Callable[[Path], np.ndarray], files: list[Path], seconds: float) -> dict:
    """Run fn over the files (cycling) for about `seconds`; images per second."""
    fn(files[0])  # warm-up: imports, lazy plugin loading
    n, start = 0, time.perf_counter()
    while True:
        fn(files[n % len(files)])
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= min(3, len(files)):
            break
    return {"images": n, "seconds": round(elapsed, 3), "images_per_s": round(n / elapsed, 1)}


def main() -> None:
    """Build the JPEGs, time every method at both sizes, print a table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per method and size")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "decode.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    ours = Preprocessor(PreprocessSpec(), MEAN.reshape(3), SHAPE)
    draft = Preprocessor(PreprocessSpec(jpeg_draft=True), MEAN.reshape(3), SHAPE)
    methods: dict[str, Callable[[Path], np.ndarray]] = {
        "skimage/caffe.io": skimage_caffe_io,
        "Pillow": pillow,
        "OpenCV": opencv,
        "simplejpeg+cv2 (savedeep)": ours.load,
        "savedeep jpeg_draft": draft.load,
    }
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in SIZES.items():
            d = Path(tmp) / label
            d.mkdir()
            files = make_jpegs(d, size)
            for name, fn in methods.items():
                results.setdefault(name, {})[label] = measure(fn, files, args.seconds)
    width = max(len(m) for m in methods)
    lines = [f"{'method':<{width}}  " + "  ".join(f"{s + ' img/s':>15}" for s in SIZES)]
    for name in methods:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{results[name][s]['images_per_s']:>15.1f}" for s in SIZES))
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "what": "decode + preprocess JPEG to a (3, 227, 227) float32 blob, one process, one thread",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": __import__("savedeep.runner.devices").devices.usable_cpus(),
            "python": platform.python_version(),
        },
        "versions": {"simplejpeg": simplejpeg.__version__, "pillow": Image.__version__, "opencv": cv2.__version__},
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
