"""Decoding and Caffe preprocessing: pycaffe equality, formats, bad inputs, means, geometry."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from savedeep.errors import ConfigError, ImageError, ModelError
from savedeep.data.images import list_images
from savedeep.data.preprocess import PreprocessSpec, Preprocessor, load_mean

skimage_io = pytest.importorskip("skimage.io")
import skimage  # noqa: E402  (after the importorskip above)
import skimage.transform  # noqa: E402

cv2.setNumThreads(1)


@pytest.fixture(scope="module")
def by_name(photos) -> dict[str, Path]:
    return {p.name: p for p in photos}


@pytest.fixture(scope="module")
def ilsvrc_mean(testdata) -> np.ndarray:
    return load_mean(testdata / "models" / "ilsvrc_2012_mean.npy")


def caffe_load_image(path: Path) -> np.ndarray:
    """caffe.io.load_image(path) (color=True), minus the as_grey= argument current scikit-image removed."""
    img = skimage.img_as_float(skimage_io.imread(path)).astype(np.float32)
    if img.ndim == 2:
        img = np.tile(img[:, :, np.newaxis], (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def transformer(caffe, shape, mean, raw_scale=255, input_scale=None):
    t = caffe.io.Transformer({"data": (1, *shape)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", raw_scale)
    t.set_mean("data", mean)
    if input_scale is not None:
        t.set_input_scale("data", input_scale)
    return t


# ---------------------------------------------------------------- pycaffe equality


@pytest.mark.caffe
@pytest.mark.parametrize("name", ["cat.jpg", "cat_gray.jpg", "astronaut.png", "camera.png"])
def test_equals_transformer_preprocess_at_input_size(pycaffe, by_name, ilsvrc_mean, name):
    # The net's input is the photo's own size, so no resize runs on either side: this
    # compares decoding (with caffe.io.load_image's reader) and the float pipeline.
    path = by_name[name]
    ref_img = caffe_load_image(path)
    shape = (3, *ref_img.shape[:2])
    pre = Preprocessor(PreprocessSpec(input_scale=0.5), ilsvrc_mean, shape)
    mean = pre.describe()["mean"]["values_bgr"]
    ref = transformer(pycaffe, shape, np.array(mean, np.float32), input_scale=0.5).preprocess("data", ref_img)
    ours = pre.load(path)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.caffe
def test_equals_transformer_with_a_cropped_mean_image(pycaffe, by_name, ilsvrc_mean, tmp_path):
    # A 227x227 crop of a real photo saved losslessly, with mean_mode image-crop.
    rgb = skimage_io.imread(by_name["coffee.png"])[50:277, 100:327]
    path = tmp_path / "crop.png"
    Image.fromarray(rgb).save(path)
    pre = Preprocessor(PreprocessSpec(mean_mode="image-crop"), ilsvrc_mean, (3, 227, 227))
    ref = transformer(pycaffe, (3, 227, 227), ilsvrc_mean[:, 14:241, 14:241]).preprocess("data", caffe_load_image(path))
    assert np.abs(pre.load(path) - ref).max() <= 1e-5


def caffe_load_gray(path: Path) -> np.ndarray:
    """caffe.io.load_image(path, color=False), minus the as_grey= spelling current scikit-image removed:
    imread(as_gray=True) (rgb2gray of a colour file, the values of a grayscale one), as float32 (H, W, 1)."""
    return skimage.img_as_float(skimage_io.imread(path, as_gray=True)).astype(np.float32)[:, :, np.newaxis]


def gray_transformer(caffe, shape, mean, raw_scale=255, input_scale=None):
    """pycaffe's Transformer as a script sets it up for a 1-channel net (no channel swap)."""
    t = caffe.io.Transformer({"data": (1, *shape)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", raw_scale)
    t.set_mean("data", mean)
    if input_scale is not None:
        t.set_input_scale("data", input_scale)
    return t


@pytest.mark.caffe
@pytest.mark.parametrize("name", ["cat.jpg", "cat_gray.jpg", "astronaut.png", "camera.png", "coffee.png"])
def test_a_grayscale_net_gets_caffe_io_luminance_at_input_size(pycaffe, by_name, name):
    """A (1, H, W) input: the luminance load_image(color=False) reads, then raw_scale, mean, input_scale.

    Colour and grayscale files; the net's input is the photo's size, so no resize runs on either side.
    Before: a 1-channel net was refused ("3-channel BGR images only").
    """
    path = by_name[name]
    ref_img = caffe_load_gray(path)
    shape = (1, *ref_img.shape[:2])
    mean = np.array([117.5], np.float32)
    pre = Preprocessor(PreprocessSpec(input_scale=0.5), mean, shape)
    ref = gray_transformer(pycaffe, shape, mean, input_scale=0.5).preprocess("data", ref_img)
    ours = pre.load(path)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.array_equal(ours, ref), np.abs(ours - ref).max()
    assert pre.describe()["mean"]["values_gray"] == [117.5]


@pytest.fixture
def caffe_io_with_resize(pycaffe, monkeypatch):
    # brocolli-caffe 9.0.2's caffe/io.py calls resize() without BVLC's
    # `from skimage.transform import resize` (NameError); restore that import.
    monkeypatch.setattr(pycaffe.io, "resize", skimage.transform.resize, raising=False)
    return pycaffe


@pytest.mark.caffe
@pytest.mark.parametrize("name", ["cat.jpg", "chelsea.png", "camera.png"])
def test_caffe_io_mode_equals_resize_image(caffe_io_with_resize, by_name, ilsvrc_mean, name):
    # Photos of other sizes: Transformer.preprocess calls caffe.io.resize_image.
    caffe = caffe_io_with_resize
    shape = (3, 227, 227)
    pre = Preprocessor(PreprocessSpec(resize="caffe-io"), ilsvrc_mean, shape)
    mean = np.array(pre.describe()["mean"]["values_bgr"], np.float32)
    ref = transformer(caffe, shape, mean).preprocess("data", caffe_load_image(by_name[name]))
    assert np.abs(pre.load(by_name[name]) - ref).max() <= 1e-5
    # and resize_image itself on the decoded float image
    img = caffe_load_image(by_name[name])
    from savedeep.data.preprocess import _caffe_resize_image

    assert np.array_equal(_caffe_resize_image(img, (227, 227)), caffe.io.resize_image(img, (227, 227)))


@pytest.mark.caffe
@pytest.mark.parametrize("name", ["cat.jpg", "camera.png"])
def test_a_grayscale_net_in_caffe_io_mode_equals_transformer_preprocess(caffe_io_with_resize, name, by_name):
    """caffe-io resizing of the luminance: the gray float image is resized, as Transformer.preprocess does,
    and a (1, H, W) mean image is averaged (mean_mode channel)."""
    caffe = caffe_io_with_resize
    shape = (1, 28, 28)
    mean_image = np.random.default_rng(4).uniform(20, 60, (1, 32, 32)).astype(np.float32)
    pre = Preprocessor(PreprocessSpec(resize="caffe-io"), mean_image, shape)
    mean = np.array(pre.describe()["mean"]["values_gray"], np.float32)
    ref = gray_transformer(caffe, shape, mean).preprocess("data", caffe_load_gray(by_name[name]))
    assert np.abs(pre.load(by_name[name]) - ref).max() <= 1e-5


@pytest.mark.caffe
def test_image_resize_mean_equals_set_mean(caffe_io_with_resize, by_name, ilsvrc_mean, tmp_path):
    caffe = caffe_io_with_resize
    rgb = skimage_io.imread(by_name["astronaut.png"])[100:327, 100:327]
    path = tmp_path / "crop.png"
    Image.fromarray(rgb).save(path)
    pre = Preprocessor(PreprocessSpec(mean_mode="image-resize"), ilsvrc_mean, (3, 227, 227))
    ref = transformer(caffe, (3, 227, 227), ilsvrc_mean).preprocess("data", caffe_load_image(path))
    assert np.abs(pre.load(path) - ref).max() <= 1e-5


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "name", ["cat.jpg", "cat_gray.jpg", "fish-bike.jpg", "astronaut.png", "coins.png", "rocket.jpg"]
)
def test_decode_equals_caffe_io_reader(by_name, name):
    pre = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    rgb = pre.decode(by_name[name])
    ref = skimage_io.imread(by_name[name])
    if ref.ndim == 2:
        ref = np.repeat(ref[:, :, None], 3, axis=2)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb, ref)


def test_every_format_decodes_to_the_same_pixels(by_name, tmp_path):
    rgb = skimage_io.imread(by_name["chelsea.png"])
    pre = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    for ext, kw in [
        ("png", {}),
        ("bmp", {}),
        ("tif", {}),
        ("tiff", {"compression": "tiff_lzw"}),
        ("webp", {"lossless": True}),
        ("gif", {}),
    ]:
        path = tmp_path / f"chelsea.{ext}"
        Image.fromarray(rgb).save(path, **kw)
        expected = np.asarray(Image.open(path).convert("RGB")) if ext == "gif" else rgb  # GIF quantises
        assert np.array_equal(pre.decode(path), expected), ext
    # content decides, not the extension
    shutil.copy(tmp_path / "chelsea.png", tmp_path / "really_png.jpg")
    assert np.array_equal(pre.decode(tmp_path / "really_png.jpg"), rgb)


def test_alpha_is_dropped_not_composited(by_name, tmp_path):
    pre = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    rgba = skimage_io.imread(by_name["astronaut.png"])[:300, :400]
    rgba = np.dstack([rgba, np.tile(np.arange(400, dtype=np.uint8)[None], (300, 1))])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(pre.decode(tmp_path / "a.png"), rgba[:, :, :3])
    la = np.dstack([rgba[:, :, 0], rgba[:, :, 3]])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.array_equal(pre.decode(tmp_path / "la.png"), np.repeat(rgba[:, :, :1], 3, axis=2))
    pal = Image.fromarray(rgba[:, :, :3]).quantize(64)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.gif", transparency=0)
    assert np.array_equal(pre.decode(tmp_path / "p.gif"), np.asarray(pal.convert("RGB")))


def test_16_bit_images_are_scaled_to_8_bit(by_name, tmp_path):
    pre = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    rgb = skimage_io.imread(by_name["coffee.png"])[:200, :300]
    wide = rgb.astype(np.uint16) * 257  # exactly representable: round(v * 255 / 65535) == v
    for ext in ("png", "tif"):
        cv2.imwrite(str(tmp_path / f"c16.{ext}"), wide[:, :, ::-1])
        cv2.imwrite(str(tmp_path / f"g16.{ext}"), wide[:, :, 0])
        assert np.array_equal(pre.decode(tmp_path / f"c16.{ext}"), rgb), ext
        assert np.array_equal(pre.decode(tmp_path / f"g16.{ext}"), np.repeat(rgb[:, :, :1], 3, axis=2)), ext
    ramp = np.array([[0, 128, 129, 32896, 65406, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "ramp.png"), ramp)
    assert pre.decode(tmp_path / "ramp.png")[0, :, 0].tolist() == [0, 0, 1, 128, 254, 255]


def test_cmyk_jpeg_is_converted(by_name, tmp_path):
    pre = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    Image.open(by_name["cat.jpg"]).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    ref = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB")).astype(int)
    assert np.abs(pre.decode(tmp_path / "cmyk.jpg").astype(int) - ref).max() <= 1


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_exif_orientation_ignored_by_default_applied_on_request(by_name, tmp_path, ext):
    src = Image.open(by_name["fish-bike.jpg"]).convert("RGB").crop((0, 0, 300, 200))
    stored = np.asarray(src)
    plain = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    turned = Preprocessor(PreprocessSpec(exif_transpose=True), None, (3, 227, 227))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{ext}"
        src.save(path, exif=exif, quality=100) if ext == "jpg" else src.save(path, exif=exif)
        decoded = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(plain.decode(path), decoded)
        if ext == "png":
            assert np.array_equal(decoded, stored)
        expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        assert np.array_equal(turned.decode(path), expected), orientation


def test_jpeg_draft_decodes_at_reduced_size_and_changes_the_numbers(by_name, tmp_path):
    big = Image.open(by_name["fish-bike.jpg"]).resize((1924, 1292), Image.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=90)
    full = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    draft = Preprocessor(PreprocessSpec(jpeg_draft=True), None, (3, 227, 227))
    assert draft.decode(tmp_path / "big.jpg").shape == (323, 481, 3)  # 1/4 scale, still >= 227
    a, b = full.load(tmp_path / "big.jpg"), draft.load(tmp_path / "big.jpg")
    assert a.shape == b.shape == (3, 227, 227)
    assert 0 < np.abs(a - b).mean() < 10
    assert draft.describe()["decoder"]["jpeg_draft"] is True


# ---------------------------------------------------------------- bad inputs


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def test_bad_inputs_fail_per_image_and_never_shift_a_row(by_name, ilsvrc_mean, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    cat = by_name["cat.jpg"].read_bytes()
    png = by_name["chelsea.png"].read_bytes()
    for i, name in enumerate(["cat.jpg", "astronaut.png", "fish-bike.jpg"]):
        shutil.copy(by_name[name], root / f"good{i}{Path(name).suffix}")
    expected = {
        "trunc_half.jpg": "truncated JPEG data",
        "trunc_tail.jpg": "truncated JPEG data",
        "zero.jpg": "zero-byte file",
        "text.jpg": "not an image (no known signature)",
        "heic.jpg": "unsupported format: HEIC",
        "trunc.png": "truncated PNG data",
        "bomb.png": "image too large: 30000x30000 > max_pixels (100000000)",
        "bomb.jpg": "image too large: 30000x30000 > max_pixels (100000000)",
        "bomb.gif": "image too large: 65535x65535 > max_pixels (100000000)",
        "bomb.webp": "image too large: 30000x30000 > max_pixels (100000000)",
        "fifo.jpg": "not a regular file (FIFO)",
        "dangling.jpg": "broken symbolic link",
        "vanishes.jpg": "file not found (missing, or deleted after listing)",
        "garbage_header.png": "corrupt or truncated PNG file (header unreadable)",
    }
    (root / "trunc_half.jpg").write_bytes(cat[: len(cat) // 2])
    (root / "trunc_tail.jpg").write_bytes(cat[:-2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not a picture\n" * 20)
    (root / "heic.jpg").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(100))
    (root / "trunc.png").write_bytes(png[: len(png) * 3 // 4])
    (root / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    (root / "bomb.jpg").write_bytes(_jpeg_with_size(cat, 30000, 30000))
    (root / "bomb.gif").write_bytes(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + bytes(20))
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (29999).to_bytes(3, "little") * 2
    (root / "bomb.webp").write_bytes(b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x)
    os.mkfifo(root / "fifo.jpg")  # tests run as root: chmod 000 would not stop a read
    os.symlink(root / "nowhere.jpg", root / "dangling.jpg")
    shutil.copy(by_name["cat.jpg"], root / "vanishes.jpg")
    (root / "garbage_header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))

    listed = list_images(root)
    (root / "vanishes.jpg").unlink()  # deleted after listing
    pre = Preprocessor(PreprocessSpec(), ilsvrc_mean, (3, 227, 227))
    rows, failures = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning or other warning may escape
        for entry in listed.entries:
            try:
                rows.append((entry.key, pre.load(entry.path)))
            except ImageError as e:
                failures[entry.key] = str(e)
    assert failures == expected
    assert [k for k, _ in rows] == ["good0.jpg", "good1.png", "good2.jpg"]
    assert all(a.shape == (3, 227, 227) and np.isfinite(a).all() for _, a in rows)
    assert len(rows) + len(failures) == len(listed)


def test_directory_and_missing_entries_from_a_list_fail_per_image(by_name, tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    shutil.copy(by_name["cat.jpg"], tmp_path / "ok.jpg")
    (tmp_path / "l.txt").write_text("dir.jpg\nok.jpg\nmissing.png\n")
    pre = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    listed = list_images(tmp_path / "l.txt")
    with pytest.raises(ImageError, match=r"^not a regular file \(directory\)$"):
        pre.load(listed.entries[0].path)
    assert pre.load(listed.entries[1].path).shape == (3, 227, 227)
    with pytest.raises(ImageError, match="file not found"):
        pre.load(listed.entries[2].path)


def test_max_pixels_is_checked_before_decoding(by_name):
    pre = Preprocessor(PreprocessSpec(max_pixels=480 * 360 - 1), None, (3, 227, 227))
    with pytest.raises(ImageError, match=r"image too large: 480x360 > max_pixels \(172799\)"):
        pre.load(by_name["cat.jpg"])


def test_truncated_other_formats_are_errors_not_gray(by_name, tmp_path):
    pre = Preprocessor(PreprocessSpec(), None, (3, 227, 227))
    src = Image.open(by_name["fish-bike.jpg"]).convert("RGB")
    for fmt, kw in [("GIF", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"quality": 90}), ("JPEG", {"progressive": True})]:
        buf = io.BytesIO()
        src.save(buf, fmt, **kw)
        path = tmp_path / f"t.{fmt.lower()}"
        path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.9)])
        with pytest.raises(ImageError, match="truncated|corrupt"):
            pre.decode(path)


# ---------------------------------------------------------------- geometry and float pipeline


def _manual(rgb: np.ndarray, mean_bgr: np.ndarray) -> np.ndarray:
    unit = (rgb.astype(np.float64) / 255).astype(np.float32)
    return unit.transpose(2, 0, 1)[::-1] * np.float32(255) - mean_bgr.reshape(3, 1, 1)


def test_resize_modes_geometry(by_name, ilsvrc_mean):
    path = by_name["chelsea.png"]  # 451 wide, 300 high
    rgb = skimage_io.imread(path)
    mean = np.array([104.0, 117.0, 123.0], np.float32)
    lin = cv2.INTER_LINEAR_EXACT

    warp = Preprocessor(PreprocessSpec(), mean, (3, 227, 227)).load(path)
    assert np.array_equal(warp, _manual(cv2.resize(rgb, (227, 227), interpolation=lin), mean))

    short = Preprocessor(PreprocessSpec(resize="short-side-crop", resize_to=256), mean, (3, 227, 227)).load(path)
    resized = cv2.resize(rgb, (385, 256), interpolation=lin)  # round(451 * 256 / 300) = 385
    assert np.array_equal(short, _manual(resized[14:241, 79:306], mean))

    crop = Preprocessor(PreprocessSpec(resize="resize-crop", resize_to=256), mean, (3, 224, 224)).load(path)
    assert np.array_equal(crop, _manual(cv2.resize(rgb, (256, 256), interpolation=lin)[16:240, 16:240], mean))

    tall = Preprocessor(PreprocessSpec(resize="short-side-crop", resize_to=227), mean, (3, 227, 227))
    assert tall.load(by_name["cat.jpg"]).shape == (3, 227, 227)


def test_out_buffer_is_filled_and_returned(by_name, ilsvrc_mean):
    pre = Preprocessor(PreprocessSpec(), ilsvrc_mean, (3, 227, 227))
    ring = np.full((2, 3, 227, 227), np.nan, np.float32)
    got = pre.load(by_name["cat.jpg"], out=ring[1])
    assert got is ring[1] or np.shares_memory(got, ring)
    assert np.array_equal(ring[1], pre.load(by_name["cat.jpg"]))
    assert np.isnan(ring[0]).all()


def test_output_is_identical_in_another_process(by_name, testdata, ilsvrc_mean):
    pre = Preprocessor(PreprocessSpec(), ilsvrc_mean, (3, 227, 227))
    here = hashlib.sha256(pre.load(by_name["fish-bike.jpg"]).tobytes()).hexdigest()
    code = (
        "import hashlib,sys; from pathlib import Path; from savedeep.data.preprocess import *; "
        "m=load_mean(Path(sys.argv[1])); p=Preprocessor(PreprocessSpec(), m, (3,227,227)); "
        "print(hashlib.sha256(p.load(Path(sys.argv[2])).tobytes()).hexdigest())"
    )
    mean_path = testdata / "models" / "ilsvrc_2012_mean.npy"
    out = subprocess.run(
        [sys.executable, "-c", code, str(mean_path), str(by_name["fish-bike.jpg"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == here


# ---------------------------------------------------------------- means, spec, describe


def test_load_mean_shapes(testdata, tmp_path):
    m = load_mean(testdata / "models" / "ilsvrc_2012_mean.npy")
    assert m.shape == (3, 256, 256) and m.dtype == np.float32
    np.save(tmp_path / "v.npy", np.array([104, 117, 123]))
    assert load_mean(tmp_path / "v.npy").tolist() == [104.0, 117.0, 123.0]
    np.save(tmp_path / "b.npy", m[None])
    assert load_mean(tmp_path / "b.npy").shape == (3, 256, 256)
    for gray in [np.array([33.3]), np.zeros((1, 28, 28)), np.zeros((1, 1, 28, 28))]:  # for 1-channel nets
        np.save(tmp_path / "g.npy", gray)
        assert load_mean(tmp_path / "g.npy").shape == gray.shape[-3:] if gray.ndim > 1 else (1,)
    for bad in [np.zeros(4), np.zeros(2), np.zeros((3, 1)), np.zeros((2, 256, 256)), np.zeros((2, 3, 8, 8))]:
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(
            ModelError,
            match=r"bad\.npy: the mean has shape .*expected a \(3,\) BGR vector or a \(3, H, W\)"
            r".*or \(1,\) or \(1, H, W\) for a net with a 1-channel input",
        ):
            load_mean(tmp_path / "bad.npy")
    (tmp_path / "junk.npy").write_text("nope")
    with pytest.raises(ModelError, match="junk.npy: cannot read the mean file"):
        load_mean(tmp_path / "junk.npy")


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def test_load_mean_reads_caffe_binaryproto(testdata, tmp_path):
    m = np.load(testdata / "models" / "ilsvrc_2012_mean.npy").astype(np.float32)
    payload = m.astype("<f4").tobytes()
    legacy = b"".join(bytes([tag << 3]) + _varint(v) for tag, v in [(1, 1), (2, 3), (3, 256), (4, 256)])
    (tmp_path / "legacy.binaryproto").write_bytes(legacy + b"\x2a" + _varint(len(payload)) + payload)
    assert np.array_equal(load_mean(tmp_path / "legacy.binaryproto"), m)
    dims = b"".join(_varint(d) for d in (1, 3, 256, 256))
    shape = b"\x0a" + _varint(len(dims)) + dims
    (tmp_path / "shape.binaryproto").write_bytes(
        b"\x2a" + _varint(len(payload)) + payload + b"\x3a" + _varint(len(shape)) + shape
    )
    assert np.array_equal(load_mean(tmp_path / "shape.binaryproto"), m)
    (tmp_path / "cut.binaryproto").write_bytes((legacy + b"\x2a" + _varint(len(payload)) + payload)[:5000])
    with pytest.raises(ModelError, match="cut.binaryproto: truncated binaryproto"):
        load_mean(tmp_path / "cut.binaryproto")


def test_mean_modes(ilsvrc_mean):
    channel = Preprocessor(PreprocessSpec(), ilsvrc_mean, (3, 227, 227)).describe()["mean"]
    assert channel["mode"] == "channel" and channel["source_shape"] == [3, 256, 256]
    assert np.allclose(channel["values_bgr"], ilsvrc_mean.astype(np.float64).mean(axis=(1, 2)), atol=1e-4)
    assert np.allclose(channel["values_bgr"], [104.007, 116.669, 122.679], atol=1e-3)
    crop = Preprocessor(PreprocessSpec(mean_mode="image-crop"), ilsvrc_mean, (3, 227, 227)).describe()["mean"]
    assert crop == {"mode": "image-crop", "source_shape": [3, 256, 256], "shape": [3, 227, 227], "offset": [14, 14]}
    with pytest.raises(ConfigError, match="'image-crop' needs a mean image at least 300x300"):
        Preprocessor(PreprocessSpec(mean_mode="image-crop"), ilsvrc_mean, (3, 300, 300))
    with pytest.raises(ConfigError, match=r"needs a \(3, H, W\) mean image but the mean is a \(3,\)"):
        Preprocessor(PreprocessSpec(mean_mode="image-resize"), np.array([1.0, 2.0, 3.0]), (3, 227, 227))
    resized = Preprocessor(PreprocessSpec(mean_mode="image-resize"), ilsvrc_mean, (3, 227, 227))
    assert resized.describe()["mean"]["shape"] == [3, 227, 227]


def test_spec_validation_and_describe(ilsvrc_mean):
    with pytest.raises(ConfigError, match="preprocess.resize: must be one of warp, .*; got 'stretch'"):
        PreprocessSpec(resize="stretch")
    with pytest.raises(ConfigError, match="preprocess.mean_mode"):
        PreprocessSpec(mean_mode="pixel")
    with pytest.raises(ConfigError, match="preprocess.raw_scale"):
        PreprocessSpec(raw_scale=0)
    with pytest.raises(ConfigError, match="use resize_to >= 227"):
        Preprocessor(PreprocessSpec(resize="resize-crop", resize_to=200), ilsvrc_mean, (3, 227, 227))
    with pytest.raises(ModelError, match="input has 2 channels; .* \\(3, H, W\\) or \\(1, H, W\\)"):
        Preprocessor(PreprocessSpec(), None, (2, 28, 28))
    # a mean whose channels are not the net's: named, with the shape to give
    with pytest.raises(ModelError, match=r"the mean has shape \(3,\) but the net's input has 1 channel.*\(1,\) vector"):
        Preprocessor(PreprocessSpec(), np.array([104.0, 117.0, 123.0]), (1, 28, 28))
    with pytest.raises(ModelError, match=r"the mean has shape \(1, 8, 8\) but the net's input has 3 channel"):
        Preprocessor(PreprocessSpec(), np.zeros((1, 8, 8)), (3, 28, 28))
    spec = PreprocessSpec(resize="short-side-crop", resize_to=256, input_scale=0.017)
    assert spec.to_dict()["resize_to"] == 256
    d = Preprocessor(spec, ilsvrc_mean, (3, 224, 224)).describe()
    assert d["resize"]["mode"] == "short-side-crop" and d["resize"]["resize_to"] == 256
    assert "INTER_LINEAR_EXACT" in d["resize"]["interpolation"]
    assert d["channel_order"] == "BGR" and d["layout"] == "CHW" and d["input_shape"] == [3, 224, 224]
    assert d["raw_scale"] == 255.0 and d["input_scale"] == 0.017
    assert d["decoder"]["exif_orientation"].startswith("ignored") and d["decoder"]["alpha"].startswith("dropped")
    assert d["order"] == [
        "decode",
        "resize",
        "to_float",
        "transpose",
        "channel_swap",
        "raw_scale",
        "mean",
        "input_scale",
    ]


# One preprocessing spec (issue 34): the config's ``preprocess:`` section and the Python API's spec were two
# classes with their own checks, and resize_to defaulted to null in one and 256 in the other.
_ONE_VALUE_PER_KEY = {
    "resize": "short-side-crop",
    "resize_to": 300,
    "mean_mode": "image-crop",
    "input_scale": 0.5,
    "raw_scale": 1.0,
    "jpeg_draft": True,
    "max_pixels": 1000,
    "exif_transpose": True,
}


def _config_with(tmp_path: Path, model: Path, preprocess: str) -> "object":
    from savedeep.config import load_config

    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(f"model: {model}\nimages: images\noutput: out/acts.pk\nblobs: [fc7]\n{preprocess}")
    return load_config(path)


@pytest.mark.parametrize("key", sorted(_ONE_VALUE_PER_KEY))
def test_a_config_key_gives_the_spec_the_python_api_gives(key, caffenet_dir, tmp_path):
    import savedeep

    value = _ONE_VALUE_PER_KEY[key]
    yaml_value = {True: "true"}.get(value, value) if isinstance(value, bool) else value
    config = _config_with(tmp_path, caffenet_dir, f"preprocess: {{{key}: {yaml_value}}}\n")
    api = PreprocessSpec(**{key: value})
    assert config.preprocess == api and getattr(config.preprocess, key) == value
    transform = savedeep.transform(caffenet_dir, {key: value})
    assert transform.preprocessor.spec == config.preprocess


def test_the_spec_has_one_default_and_one_validation(caffenet_dir, tmp_path):
    import dataclasses

    import savedeep
    from savedeep.config import _PREPROCESS_KEYS

    config = _config_with(tmp_path, caffenet_dir, "")
    assert config.preprocess == PreprocessSpec() == savedeep.transform(caffenet_dir).preprocessor.spec
    assert config.preprocess.resize_to == 256  # was null in the config, 256 in the spec
    # the config table documents the class's own defaults, for every field
    assert {k.name: k.default for k in _PREPROCESS_KEYS} == {
        f.name: f.default for f in dataclasses.fields(PreprocessSpec)
    }
    # null means the default, and the same spelling is accepted by both (the spec refused "Warp" and None)
    assert (
        _config_with(tmp_path, caffenet_dir, "preprocess: {resize: Warp, resize_to: null}\n").preprocess
        == PreprocessSpec(resize="Warp", resize_to=None)
        == PreprocessSpec()
    )
    # one mistake, one message, from a config file, the spec or savedeep.transform
    messages = set()
    for make in (
        lambda: _config_with(tmp_path, caffenet_dir, "preprocess: {input_scale: -1}\n"),
        lambda: PreprocessSpec(input_scale=-1),
        lambda: savedeep.transform(caffenet_dir, {"input_scale": -1}),
    ):
        with pytest.raises(ConfigError) as excinfo:
            make()
        messages.add(str(excinfo.value).split(": ", 1)[1])
    assert messages == {"preprocess.input_scale: expected a finite number > 0, got -1 (int)"}
    with pytest.raises(ConfigError, match="preprocess.resze: unknown key; did you mean 'resize'"):
        savedeep.transform(caffenet_dir, {"resze": "warp"})
