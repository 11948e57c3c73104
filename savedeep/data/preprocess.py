"""Decode an image file and turn it into a Caffe input blob, as pycaffe users do.

## Preprocessing specification

Every image goes through these steps, in this order. The numbers are those of
pycaffe's ``caffe.io.Transformer.preprocess`` (with ``set_transpose((2,0,1))``,
``set_channel_swap((2,1,0))``, ``set_raw_scale(raw_scale)``,
``set_mean(mean)``, ``set_input_scale(input_scale)``) applied to the decoded
image; the tests check this to 1e-5 (in practice bit for bit).

1. **Read.** The file must be a regular file (a directory, FIFO, socket or
   device named ``*.jpg`` is refused without blocking), not empty, and still
   present (a file deleted after listing is a failure, not a crash).
2. **Identify by content**, never by extension: JPEG, PNG, GIF, BMP, TIFF,
   WebP signatures. Anything else is "not an image (no known signature)".
3. **Check the declared size before decoding**: ``width * height`` above
   ``max_pixels`` (default 100 megapixels) is refused, so a decompression
   bomb costs a header read, not gigabytes. (TIFF sizes are read by Pillow,
   whose own limit of about 179 megapixels also applies to non-JPEG files.)
4. **Decode to 8-bit RGB** (``uint8``, ``H x W x 3``):
   - JPEG: simplejpeg (libjpeg-turbo, accurate integer IDCT, fancy
     upsampling; bit-identical to Pillow and OpenCV here) in strict mode: a
     truncated JPEG is an error ("truncated JPEG data"), never an image
     padded with gray. A JPEG TurboJPEG cannot read, or one with a
     recoverable libjpeg warning (e.g. extraneous bytes before a marker), is
     decoded by Pillow instead, which also refuses truncated data. CMYK/YCCK
     JPEGs are converted to RGB by libjpeg-turbo.
   - PNG, GIF (first frame), BMP, TIFF (first page), WebP (first frame):
     Pillow, restricted to the identified format, with
     ``ImageFile.LOAD_TRUNCATED_IMAGES = False`` (set explicitly by this
     module) so truncated data raises.
   - Grayscale becomes three equal channels; palette, CMYK, YCbCr and other
     modes are converted to RGB by Pillow.
   - **Alpha is dropped**, not composited: the stored RGB values are kept,
     exactly as ``caffe.io.load_image`` does (``img[:, :, :3]``).
   - **16-bit** images (PNG, TIFF) are read at full depth (OpenCV for RGB,
     Pillow for gray) and scaled to 8 bits as ``round(v * 255 / 65535)``.
     pycaffe would keep ``v / 65535`` unrounded, so 16-bit inputs differ from
     it by at most 0.5 after ``raw_scale`` 255. 32-bit float images are refused.
   - **EXIF orientation is ignored by default**, as ``caffe.io.load_image``
     (scikit-image) ignores it, so results match existing pycaffe scripts.
     ``exif_transpose=True`` applies it (the eight orientations, as Pillow's
     ``ImageOps.exif_transpose``).
   - ``jpeg_draft=True`` (off by default) lets libjpeg decode a JPEG at
     1/2, 1/4 or 1/8 scale, the smallest scale still at least as large as
     the resize target. It is much faster on large photos and **changes the
     numbers** (DCT-domain downscaling instead of the resize below).
5. **Resize** to the net's input ``H x W`` (skipped when the image already has
   that size):
   - ``warp`` (default): resize to ``H x W`` ignoring the aspect ratio, the
     classic Caffe way.
   - ``short-side-crop``: resize so the shorter side is ``resize_to``
     (default 256; the longer side ``round(long * resize_to / short)``), then center crop.
   - ``resize-crop``: resize to ``resize_to x resize_to``, then center crop
     (the classic 256 -> 227).
   - The center crop starts at ``((h - H) // 2, (w - W) // 2)``, as Caffe's
     DataTransformer does at test time.
   - Interpolation for these three: bilinear on the 8-bit image with OpenCV's
     ``INTER_LINEAR_EXACT``: the same formula as Caffe's ``cv::resize``
     (``INTER_LINEAR``) but a fixed-point implementation that gives the same
     bytes on every CPU and OpenCV build, so a file gives the same numbers in
     every process and on every machine. Results round to integers, as in
     Caffe's C++ data layers.
   - ``caffe-io``: exactly ``caffe.io.resize_image`` (upstream BVLC
     version) on the float image in [0, 1]: min-max normalise, scikit-image
     ``resize(order=1, mode='constant')`` with the installed scikit-image's
     defaults (since scikit-image 0.15 that includes Gaussian anti-aliasing
     when downsampling, which Caffe-era scikit-image did not do), then back.
     Slow; for reproducing pycaffe numbers. Needs scikit-image.
6. **Convert to float32 in [0, 1]** as ``float32(v / 255)`` (computed in
   float64 then rounded, like scikit-image's ``img_as_float``).
7. **HWC -> CHW**, then **RGB -> BGR**.
   A net whose input has **one channel** (``(1, H, W)``: LeNet-style and
   colorization nets) gets the luminance instead, as
   ``caffe.io.load_image(path, color=False)`` reads it (scikit-image's
   ``rgb2gray``): ``0.2125 R + 0.7154 G + 0.0721 B`` of the float64 values
   ``v / 255``, rounded once to float32; an image whose three channels are
   equal (a grayscale file) gives ``float32(v / 255)`` exactly, as
   scikit-image reads a grayscale file without ``rgb2gray``. With the
   8-bit resize modes the luminance is taken after the resize (step 5), like
   the colour path rounds its resize to 8 bits; with ``caffe-io`` it is
   taken first and the float image is resized, as pycaffe does. Alpha is
   dropped here too (scikit-image would composite an RGBA file on white).
8. **Multiply by ``raw_scale``** (default 255).
9. **Subtract the mean** (float32):
   - a ``(3,)`` mean: per BGR channel (``(1,)`` for a 1-channel net);
   - a ``(3, h, w)`` mean image (``(1, h, w)`` for a 1-channel net) with ``mean_mode``: ``channel`` (default:
     averaged per channel, as most pycaffe scripts do with
     ``mean.mean(1).mean(1)``), ``image-crop`` (center crop to ``H x W``, as
     Caffe's DataTransformer with ``mean_file`` and ``crop_size``), or
     ``image-resize`` (resized to ``H x W`` exactly as
     ``Transformer.set_mean`` does; needs scikit-image).
10. **Multiply by ``input_scale``** if set.

The result is a float32 ``(3, H, W)`` BGR array (``(1, H, W)`` luminance for a 1-channel net). ``Preprocessor.describe()``
records all of the above for the manifest.

The options named above (``resize``, ``resize_to``, ``mean_mode``, ``input_scale``, ``raw_scale``,
``jpeg_draft``, ``max_pixels``, ``exif_transpose``) are the fields of :class:`PreprocessSpec`, which is
at once the config's ``preprocess:`` section and the Python API's spec (``savedeep.transform(model,
preprocess={...})``): one class, one validation, one default each (the config table lists them).

Size: about 100 lines are the exact preprocessing specification above (the docs site renders it, in
docs/explanation/preprocessing.md); the one implementation every engine, the producers and
``savedeep.transform`` run follows it step by step.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageFile, UnidentifiedImageError

# The spec's one class, validation and defaults live with the config (a lower layer); re-exported here.
from savedeep.config import PreprocessSpec
from savedeep.errors import ConfigError, ImageError, ModelError

log = logging.getLogger(__name__)

# Pillow's default would be False too, but a library or notebook imported earlier
# may have set it; a truncated image must never be read as a partly gray one.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# float32(v / 255) computed in float64, as skimage.img_as_float then astype(float32).
_TO_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
# img_as_float's own float64 values (v * (1 / 255): an ulp off v / 255 for some v), for the luminance.
_TO_UNIT64 = np.arange(256, dtype=np.float64) * (1.0 / 255)
# scikit-image's rgb2gray weights (ITU-R BT.709 luma), which caffe.io.load_image(color=False) applies.
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], np.float64)
# The channel counts of an input savedeep can feed: BGR images, or their luminance.
INPUT_CHANNELS = (3, 1)

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),
    (b"MM\x00+", 0, "TIFF"),
)
# Recognised only to say what they are in the failure reason.
_UNSUPPORTED_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"8BPS", 0, "PSD"),
    (b"%PDF", 0, "PDF"),
    (b"\xff\x0a", 0, "JPEG XL"),
)
_ORIENTATION_TAG = 0x0112


def load_mean(path: Path) -> np.ndarray:
    """Read a mean file (.npy, or Caffe .binaryproto) as float32 (C,) or (C, H, W): C is 3 (BGR) or 1 (gray)."""
    path = Path(path)
    accepted = (
        "a (3,) BGR vector or a (3, H, W) mean image, or (1,) or (1, H, W) for a net with a 1-channel "
        "input (a leading batch dimension of 1 is accepted)"
    )
    try:
        if path.suffix.lower() == ".binaryproto":
            arr = _read_binaryproto(path.read_bytes(), path)
        else:
            with open(path, "rb") as f:
                magic = f.read(6)
            if magic != b"\x93NUMPY":
                raise ModelError(
                    f"{path}: cannot read the mean file: it is not a .npy file; save the mean "
                    f"with numpy.save as {accepted}"
                )
            arr = np.load(path, allow_pickle=False)
    except ModelError:
        raise
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read the mean file ({e}); provide {accepted} as .npy or .binaryproto") from e
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ModelError(f"{path}: the mean is not a numeric array; provide {accepted}")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    channels = arr.shape[0] if arr.ndim in (1, 3) else None
    if channels not in INPUT_CHANNELS or (arr.ndim == 3 and not (arr.shape[1] > 0 and arr.shape[2] > 0)):
        raise ModelError(f"{path}: the mean has shape {arr.shape}; expected {accepted}")
    if not np.all(np.isfinite(arr)):
        raise ModelError(f"{path}: the mean contains NaN or infinite values; regenerate the mean file")
    return np.ascontiguousarray(arr, dtype=np.float32)


class Preprocessor:
    """Turns one image file into a float32 (C, H, W) input blob for a given net and mean."""

    def __init__(self, spec: PreprocessSpec, mean: np.ndarray | None, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 3:
            raise ModelError(f"input shape {tuple(input_shape)}: expected (C, H, W) without the batch dimension")
        c, h, w = (int(v) for v in input_shape)
        if c not in INPUT_CHANNELS:
            raise ModelError(
                f"the net's input has {c} channels; savedeep feeds 3-channel BGR images or their 1-channel "
                "luminance (use a model whose input is (3, H, W) or (1, H, W))"
            )
        if h < 1 or w < 1:
            raise ModelError(f"input shape {tuple(input_shape)}: height and width must be positive")
        self.spec = spec
        self.input_shape = (c, h, w)
        if spec.resize in ("short-side-crop", "resize-crop") and spec.resize_to < max(h, w):
            raise ConfigError(
                f"preprocess.resize_to: {spec.resize_to} is smaller than the net's input {h}x{w}; "
                f"'{spec.resize}' crops {h}x{w} out of the resized image, so use resize_to >= {max(h, w)}"
            )
        self._mean, self._mean_info = self._prepare_mean(mean)
        self._raw_scale = float(spec.raw_scale)
        self._input_scale = None if spec.input_scale is None else float(spec.input_scale)
        if spec.resize == "warp" or spec.resize == "caffe-io":
            self._draft_min = (h, w)
        else:
            self._draft_min = (spec.resize_to, spec.resize_to)

    # ---- mean -------------------------------------------------------------

    def _prepare_mean(self, mean: np.ndarray | None) -> tuple[np.ndarray | None, dict[str, Any]]:
        mode = self.spec.mean_mode
        _, h, w = self.input_shape
        if mean is None:
            return None, {"mode": "none"}
        c = self.input_shape[0]
        values_key = "values_bgr" if c == 3 else "values_gray"
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim not in (1, 3) or mean.shape[0] != c:
            raise ModelError(
                f"the mean has shape {mean.shape} but the net's input has {c} channel(s): give a ({c},) vector "
                f"or a ({c}, H, W) mean image"
                + (" (the luminance's mean, for this grayscale-input net)" if c == 1 else "")
            )
        if mean.ndim == 1:
            if mode != "channel":
                raise ConfigError(
                    f"preprocess.mean_mode: '{mode}' needs a ({c}, H, W) mean image but the mean is a ({c},) "
                    "per-channel vector; use mean_mode 'channel'"
                )
            return mean.reshape(c, 1, 1), {"mode": "channel", values_key: [float(v) for v in mean]}
        info: dict[str, Any] = {"mode": mode, "source_shape": list(mean.shape)}
        if mode == "channel":
            # Average in float64 like pycaffe scripts' mean.mean(1).mean(1), then round once.
            values = mean.astype(np.float64).mean(axis=(1, 2)).astype(np.float32)
            info[values_key] = [float(v) for v in values]
            return values.reshape(c, 1, 1), info
        if mode == "image-crop":
            mh, mw = mean.shape[1:]
            if mh < h or mw < w:
                raise ConfigError(
                    f"preprocess.mean_mode: 'image-crop' needs a mean image at least {h}x{w}, but it is "
                    f"{mh}x{mw}; use 'image-resize' or 'channel'"
                )
            top, left = (mh - h) // 2, (mw - w) // 2
            out = np.ascontiguousarray(mean[:, top : top + h, left : left + w])
            info.update(shape=list(out.shape), offset=[top, left])
            return out, info
        # image-resize: exactly Transformer.set_mean for a mean of another size.
        if mean.shape[1:] == (h, w):
            out = mean
        else:
            m_min, m_max = mean.min(), mean.max()
            normal = (mean - m_min) / (m_max - m_min)
            out = (
                _caffe_resize_image(normal.transpose((1, 2, 0)), (h, w)).transpose((2, 0, 1)) * (m_max - m_min) + m_min
            )
        out = np.ascontiguousarray(out, dtype=np.float32)
        info.update(shape=list(out.shape), interpolation=_caffe_io_interpolation())
        return out, info

    # ---- public -----------------------------------------------------------

    def load(self, path: Path, out: np.ndarray | None = None) -> np.ndarray:
        """Decode and preprocess one image file into (C, H, W) float32; ImageError(reason) if unusable."""
        if out is not None and (out.shape != self.input_shape or out.dtype != np.float32):
            raise ValueError(f"out must be float32 {self.input_shape}, got {out.dtype} {out.shape}")
        return self.from_rgb(self.decode(Path(path)), out)

    def from_pil(self, im: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """Preprocess an image already opened by Pillow (a torchvision data set's item): its pixels as the
        decoder of :meth:`decode` gives them for the image's mode (alpha dropped, 16-bit gray scaled, EXIF
        orientation applied only with ``exif_transpose``), then :meth:`from_rgb`."""
        w, h = im.size
        self._check_size(w, h)
        orientation = im.getexif().get(_ORIENTATION_TAG, 1) if self.spec.exif_transpose else 1
        rgb = _pillow_to_rgb(im, im.format or "image")
        if orientation != 1:
            rgb = _apply_orientation(rgb, orientation)
        return self.from_rgb(rgb, out)

    def from_rgb(self, rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The steps after decoding (resize, to float, CHW, BGR, raw_scale, mean, input_scale) on a uint8
        RGB (H, W, 3) array; the producer's :meth:`load` is :meth:`decode` then this."""
        _, h, w = self.input_shape
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected uint8 RGB (H, W, 3), got {rgb.dtype} {rgb.shape}")
        if self.input_shape[0] == 1:
            out = self._luminance(rgb, out)
        elif self.spec.resize == "caffe-io":
            img = _TO_UNIT[rgb]
            if img.shape[:2] != (h, w):
                img = _caffe_resize_image(img, (h, w))
            chw = img.transpose(2, 0, 1)[::-1]
            if out is None:
                out = np.empty(self.input_shape, np.float32)
            out[...] = chw
        else:
            # A 256-entry table lookup (cv2.LUT) gives the same float32(v / 255) as
            # img_as_float, about twice as fast as numpy's take on the transposed view.
            unit = cv2.LUT(self._geometry(rgb), _TO_UNIT)
            if out is None:
                out = np.empty(self.input_shape, np.float32)
            out[...] = unit.transpose(2, 0, 1)[::-1]
        # The same float32 operations, in the same order, as Transformer.preprocess.
        out *= np.float32(self._raw_scale)
        if self._mean is not None:
            out -= self._mean
        if self._input_scale is not None:
            out *= np.float32(self._input_scale)
        return out

    def _luminance(self, rgb: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The (1, H, W) float32 luminance in [0, 1] of a decoded image (step 7 of the specification)."""
        _, h, w = self.input_shape
        if self.spec.resize != "caffe-io":
            rgb = self._geometry(rgb)
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            gray = _TO_UNIT[rgb[..., 0]]  # a grayscale file: scikit-image reads it without rgb2gray
        else:
            gray = (_TO_UNIT64[rgb] @ _GRAY_WEIGHTS).astype(np.float32)  # rgb2gray, as scikit-image computes it
        if gray.shape != (h, w):  # caffe-io: the float image is resized, as Transformer.preprocess does
            gray = _caffe_resize_image(gray[:, :, np.newaxis], (h, w))[:, :, 0]
        if out is None:
            out = np.empty(self.input_shape, np.float32)
        out[0] = gray
        return out

    def decode(self, path: Path) -> np.ndarray:
        """Read and decode one file to uint8 RGB (H, W, 3), before any resizing; ImageError if unusable."""
        data = _read_file(path)
        fmt = _identify(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if fmt == "JPEG":
                rgb = self._decode_jpeg(data)
            else:
                rgb = self._decode_pillow(data, fmt)
        for w in caught:
            log.debug("%s: decoder warning: %s", path, w.message)
        return rgb

    def describe(self) -> dict[str, Any]:
        """The exact preprocessing as plain values, for the manifest."""
        spec = self.spec
        _, h, w = self.input_shape
        if spec.resize == "caffe-io":
            resize: dict[str, Any] = {"mode": "caffe-io", "interpolation": _caffe_io_interpolation()}
        else:
            resize = {
                "mode": spec.resize,
                "interpolation": "bilinear, OpenCV INTER_LINEAR_EXACT on uint8 (rounded to integers)",
            }
            if spec.resize != "warp":
                resize["resize_to"] = spec.resize_to
                resize["crop"] = "center, offset ((h - H) // 2, (w - W) // 2)"
        return {
            "decoder": {
                "jpeg": f"simplejpeg {simplejpeg.__version__} (libjpeg-turbo, accurate DCT, strict; "
                f"Pillow {Image.__version__} for JPEGs TurboJPEG rejects)",
                "other": f"Pillow {Image.__version__} (PNG, GIF first frame, BMP, TIFF first page, WebP)",
                "16bit": f"OpenCV {cv2.__version__} for RGB, Pillow for gray; round(v * 255 / 65535)",
                "alpha": "dropped (RGB values kept, like caffe.io.load_image)",
                "exif_orientation": "applied" if spec.exif_transpose else "ignored (like caffe.io.load_image)",
                "jpeg_draft": spec.jpeg_draft,
                "max_pixels": spec.max_pixels,
            },
            "resize": resize,
            "to_float": "float32(v / 255)",
            "layout": "CHW",
            "channel_order": "BGR"
            if self.input_shape[0] == 3
            else "gray: 0.2125 R + 0.7154 G + 0.0721 B of v / 255 in float64 (scikit-image rgb2gray), or v / 255 where "
            "R = G = B",
            "input_shape": list(self.input_shape),
            "raw_scale": self._raw_scale,
            "mean": self._mean_info,
            "input_scale": self._input_scale,
            "order": ["decode", "resize", "to_float", "transpose", "channel_swap", "raw_scale", "mean", "input_scale"],
        }

    # ---- decoding ---------------------------------------------------------

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self.spec.max_pixels:
            raise ImageError(f"image too large: {width}x{height} > max_pixels ({self.spec.max_pixels})")
        if width < 1 or height < 1:
            raise ImageError(f"invalid image size {width}x{height}")

    def _decode_jpeg(self, data: bytes) -> np.ndarray:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            # TurboJPEG cannot parse it (damaged header, unusual sampling, 12-bit...): Pillow decides.
            return self._decode_pillow(data, "JPEG")
        self._check_size(width, height)
        min_h, min_w = self._draft_min if self.spec.jpeg_draft else (0, 0)
        try:
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_h, min_width=min_w, strict=True)
        except ValueError as e:
            if "Premature end of JPEG file" in str(e):
                raise ImageError("truncated JPEG data") from None
            # A recoverable libjpeg warning (e.g. "extraneous bytes before marker"), which
            # strict mode raises: Pillow decodes those (same libjpeg) and still refuses truncation.
            log.debug("simplejpeg refused a JPEG (%s); decoding it with Pillow", e)
            return self._decode_pillow(data, "JPEG")
        if self.spec.exif_transpose:
            rgb = _apply_orientation(rgb, _exif_orientation(data))
        return rgb

    def _decode_pillow(self, data: bytes, fmt: str) -> np.ndarray:
        label = fmt
        declared = _declared_size(data, fmt)
        if declared is not None and declared[0] * declared[1] > self.spec.max_pixels:
            # Before Pillow sees it: Pillow's own bomb check would warn, or refuse with its own limit.
            self._check_size(*declared)
        try:
            # formats=: only the identified decoder may run (Pillow's other plugins,
            # e.g. EPS via Ghostscript, must never see untrusted files).
            im = Image.open(io.BytesIO(data), formats=[fmt])  # our format names are Pillow's
        except Image.DecompressionBombError as e:
            raise ImageError(f"image too large for Pillow ({_short(e)})") from None
        except UnidentifiedImageError:
            # Pillow's message names a BytesIO object; say what it means instead.
            raise ImageError(f"corrupt or truncated {label} file (header unreadable)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError(f"corrupt {label} header ({_short(e)})") from None
        with im:
            self._check_size(*im.size)
            if fmt == "JPEG" and self.spec.jpeg_draft:
                im.draft("RGB", (self._draft_min[1], self._draft_min[0]))
            orientation = im.getexif().get(_ORIENTATION_TAG, 1) if self.spec.exif_transpose else 1
            rawmode = _rawmode(im)
            try:
                if fmt in ("PNG", "TIFF") and im.mode in ("RGB", "RGBA") and ";16" in rawmode:
                    # Pillow would keep only the high byte of 16-bit colour; read full depth.
                    rgb = _decode_16bit_color(data, label)
                else:
                    im.load()
                    rgb = _pillow_to_rgb(im, label)
            except ImageError:
                raise
            except OSError as e:
                if "truncated" in str(e):
                    raise ImageError(f"truncated {label} data") from None
                raise ImageError(f"corrupt {label} data ({_short(e)})") from None
            except (ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError) as e:
                raise ImageError(f"corrupt {label} data ({_short(e)})") from None
        if orientation != 1:
            rgb = _apply_orientation(rgb, orientation)
        return rgb

    # ---- resizing ---------------------------------------------------------

    def _geometry(self, rgb: np.ndarray) -> np.ndarray:
        _, h, w = self.input_shape
        mode = self.spec.resize
        ih, iw = rgb.shape[:2]
        if mode == "warp":
            return _resize(rgb, h, w)
        if mode == "short-side-crop":
            s = self.spec.resize_to
            if ih <= iw:
                nh, nw = s, max(s, int(round(iw * s / ih)))
            else:
                nh, nw = max(s, int(round(ih * s / iw))), s
        else:  # resize-crop
            nh = nw = self.spec.resize_to
        resized = _resize(rgb, nh, nw)
        top, left = (nh - h) // 2, (nw - w) // 2
        return resized[top : top + h, left : left + w]


# ---- helpers --------------------------------------------------------------


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _read_file(path: Path) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO named x.jpg must not wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError("broken symbolic link") from None
        raise ImageError("file not found (missing, or deleted after listing)") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot open file ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "directory"
                if stat.S_ISDIR(st.st_mode)
                else "FIFO"
                if stat.S_ISFIFO(st.st_mode)
                else "socket"
                if stat.S_ISSOCK(st.st_mode)
                else "device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "special file"
            )
            raise ImageError(f"not a regular file ({kind})")
        if st.st_size == 0:
            raise ImageError("zero-byte file")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read()
    except OSError as e:
        raise ImageError(f"read error ({e.strerror or e})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if not data:
        raise ImageError("zero-byte file")
    return data


def _identify(data: bytes) -> str:
    for sig, offset, name in _SIGNATURES:
        if data.startswith(sig, offset):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for sig, offset, name in _UNSUPPORTED_SIGNATURES:
        if data.startswith(sig, offset):
            raise ImageError(f"unsupported format: {name}")
    raise ImageError("not an image (no known signature)")


def _declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height from the header of a PNG, GIF, BMP or WebP; None where not simply at hand."""
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", data[6:10])
        if fmt == "BMP" and struct.unpack("<I", data[14:18])[0] >= 40:
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)  # negative height = top-down rows
        if fmt == "WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
    except struct.error:
        return None  # too short: Pillow reports the damage
    return None


def _rawmode(im: Image.Image) -> str:
    try:
        args = im.tile[0].args if im.tile else None
    except (AttributeError, IndexError):
        return ""
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _scale16(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _decode_16bit_color(data: bytes, label: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError(f"corrupt {label} data (16-bit decoding failed)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    else:
        arr = arr[:, :, 2::-1]  # BGR(A) -> RGB, alpha dropped
    if arr.dtype == np.uint16:
        return _scale16(arr)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    raise ImageError(f"unsupported {label} sample type {arr.dtype}")


def _pillow_to_rgb(im: Image.Image, label: str) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im)
        if mode == "I" and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"unsupported {label} pixel format: 32-bit integer values outside 0..65535")
        g = _scale16(a)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageError(f"unsupported {label} pixel format: 32-bit float")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        # Alpha dropped, colour kept, like caffe.io.load_image's img[:, :, :3].
        return np.ascontiguousarray(np.asarray(im.convert("RGBA"))[:, :, :3])
    return np.asarray(im.convert("RGB"))


def _exif_orientation(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not fail an image that decoded
        return 1


def _apply_orientation(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Undo EXIF orientation 1..8 the way PIL.ImageOps.exif_transpose does."""
    if orientation == 2:
        out = rgb[:, ::-1]
    elif orientation == 3:
        out = rgb[::-1, ::-1]
    elif orientation == 4:
        out = rgb[::-1]
    elif orientation == 5:
        out = rgb.transpose(1, 0, 2)
    elif orientation == 6:
        out = np.rot90(rgb, -1)
    elif orientation == 7:
        out = rgb.transpose(1, 0, 2)[::-1, ::-1]
    elif orientation == 8:
        out = np.rot90(rgb, 1)
    else:
        return rgb
    return np.ascontiguousarray(out)


def _resize(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    if rgb.shape[:2] == (h, w):
        return rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR_EXACT)


def _caffe_io_interpolation() -> str:
    try:
        import skimage
    except ImportError:
        return "caffe.io.resize_image (scikit-image not installed)"
    return f"caffe.io.resize_image: min-max normalised, skimage {skimage.__version__} resize(order=1, mode='constant')"


def _caffe_resize_image(im: np.ndarray, new_dims: tuple[int, int]) -> np.ndarray:
    """caffe.io.resize_image for 3-channel float images, line for line."""
    try:
        from skimage.transform import resize
    except ImportError as e:
        raise ConfigError(
            "preprocess: 'caffe-io' resizing and mean_mode 'image-resize' need scikit-image; "
            "pip install scikit-image, or use resize 'warp' and mean_mode 'channel' or 'image-crop'"
        ) from e
    im_min, im_max = im.min(), im.max()
    if im_max > im_min:
        im_std = (im - im_min) / (im_max - im_min)
        resized_std = resize(im_std, new_dims, order=1, mode="constant")
        resized_im = resized_std * (im_max - im_min) + im_min
    else:
        ret = np.empty((new_dims[0], new_dims[1], im.shape[-1]), dtype=np.float32)
        ret.fill(im_min)
        return ret
    return resized_im.astype(np.float32)


def _read_binaryproto(data: bytes, path: Path) -> np.ndarray:
    """Decode a Caffe BlobProto (with savedeep/caffe/caffemodel.py's decoder): shape, or num/channels/height/width."""
    import struct

    from savedeep.caffe.caffemodel import DecodeError, decode_message

    try:
        blob = decode_message(data, "BlobProto")
    except (DecodeError, struct.error) as exc:
        raise ModelError(
            f"{path}: truncated binaryproto, or not a Caffe BlobProto ({exc}); regenerate the mean "
            "file, or provide the mean as .npy"
        ) from None
    values = np.asarray(blob.data if blob.has("data") else blob.double_data)
    if blob.has("shape"):
        dims = [int(d) for d in blob.shape.dim]
    else:  # the legacy 4-d form; an absent dimension is 1 (Caffe's own default of 0 would hold no values)
        dims = [int(getattr(blob, n)) if blob.has(n) else 1 for n in ("num", "channels", "height", "width")]
    if values.size == 0 or int(np.prod(dims)) != values.size:
        raise ModelError(
            f"{path}: the binaryproto holds {values.size} values for shape {dims}; regenerate the mean file"
        )
    return values.reshape(dims)
