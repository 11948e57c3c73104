"""Receptive fields: known values for CaffeNet/AlexNet/GoogLeNet, and a perturbation check with the torch engine.

The perturbation check is the ground truth: a pixel outside a unit's field (as
computed, clipped to the image) must leave the unit unchanged, and one inside
must change it. For a small net with padding, strides, dilation, ceil pooling,
LRN within channels and a concat of branches of different fields, every row
and column of the input is perturbed, and the set of rows (columns) that move
each position must be exactly the computed interval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from savedeep.caffe.synthetic import random_weights, write_caffemodel
from savedeep.caffe.model import load_net
from savedeep.caffe.receptive_field import blob_axes_bounds, model_receptive_fields, receptive_fields

torch = pytest.importorskip("torch")


def test_caffenet_known_values(testdata: Path) -> None:
    for name in ("caffenet", "alexnet"):
        rf = model_receptive_fields(testdata / "models" / name / "deploy.prototxt")
        assert rf["conv1"].size == (11, 11) and rf["conv1"].jump == (4, 4)
        assert rf["pool5"].size == (195, 195) and rf["pool5"].jump == (32, 32)
        assert rf["conv5"].size == (163, 163) and rf["conv5"].jump == (16, 16)
        assert rf["data"].size == (1, 1)
        assert rf["fc6"] is None and rf["prob"] is None  # no spatial axes
    rf = model_receptive_fields(testdata / "models" / "caffenet" / "deploy.prototxt")
    # conv1 has no padding: unit 0 sees pixels 0..10, centre 5; conv2 pads by 2 units of jump 8
    assert rf["conv1"].describe() == {"size": [11, 11], "jump": [4, 4], "start": [0, 0]}
    assert rf["conv2"].describe()["start"] == [-16, -16]
    cy, cx = rf["pool5"].centres()
    assert cy[0] == -64 + 97 and np.all(np.diff(cy) == 32)


def test_googlenet_concat_is_the_union_of_the_branches(testdata: Path) -> None:
    rf = model_receptive_fields(testdata / "models" / "googlenet" / "deploy.prototxt")
    base = rf["pool2/3x3_s2"]
    assert base.size == (27, 27) and base.jump == (8, 8)
    # the four branches of inception_3a: 1x1, 1x1+3x3, 1x1+5x5, 3x3 pool + 1x1
    assert rf["inception_3a/1x1"].size == (27, 27)
    assert rf["inception_3a/3x3"].size == (27 + 2 * 8,) * 2
    assert rf["inception_3a/5x5"].size == (27 + 4 * 8,) * 2
    assert rf["inception_3a/pool_proj"].size == (27 + 2 * 8,) * 2
    out = rf["inception_3a/output"]
    assert out.size == (59, 59) and out.jump == (8, 8)
    assert out.describe()["start"] == rf["inception_3a/5x5"].describe()["start"]


def test_pooled_grid_cell_is_the_union_of_its_positions(testdata: Path) -> None:
    rf = model_receptive_fields(testdata / "models" / "caffenet" / "deploy.prototxt")["conv1"]
    edges = [[0, 28], [27, 55]]  # adaptive bins of 55 into 2 (overlapping at 27)
    b = blob_axes_bounds(rf, {"kind": "pool", "grid": 2, "row_edges": edges, "col_edges": edges})
    lo, hi = b["y"]
    assert list(lo) == [0, 27 * 4] and list(hi) == [27 * 4 + 10, 54 * 4 + 10]
    assert blob_axes_bounds(rf, {"kind": "projection"}) is None
    assert blob_axes_bounds(rf, {"kind": "pool", "grid": None}) is None


SMALL = """name: "rf"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 29 dim: 29 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 5 pad: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 dilation: 2 pad: 2 stride: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "conv2" top: "pool1"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "a" type: "Convolution" bottom: "pool1" top: "a" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "b" type: "Convolution" bottom: "pool1" top: "b"
  convolution_param { num_output: 2 kernel_h: 5 kernel_w: 3 pad_h: 2 pad_w: 1 } }
layer { name: "norm" type: "LRN" bottom: "a" top: "norm" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } }
layer { name: "cat" type: "Concat" bottom: "norm" bottom: "b" top: "cat" }
layer { name: "relu" type: "ReLU" bottom: "cat" top: "cat" }
layer { name: "pool2" type: "Pooling" bottom: "cat" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "conv1" bottom: "pool1" top: "crop" crop_param { axis: 2 offset: 5 offset: 9 } }
layer { name: "sum" type: "Eltwise" bottom: "crop" bottom: "pool1" top: "sum" }
"""


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    d = tmp_path_factory.mktemp("rfnet")
    (d / "deploy.prototxt").write_text(SMALL)
    net = load_net(d / "deploy.prototxt")
    weights = random_weights(net, seed=3)
    for layer_blobs in weights.values():  # positive weights: a ReLU after them cannot zero a unit out
        for i, w in enumerate(layer_blobs):
            layer_blobs[i] = np.abs(w) + 0.05
    write_caffemodel(d / "weights.caffemodel", net, weights)
    return load_net(d / "deploy.prototxt", d / "weights.caffemodel")


def _moved(net, blobs: list[str], base: np.ndarray, axis: int, positions: list[int] | None = None) -> dict:
    """For each perturbed row (axis 2) or column (axis 3) p: which positions of each blob changed."""
    from savedeep.engines.torch_engine import TorchEngine

    size = base.shape[axis]
    positions = list(range(size)) if positions is None else positions
    batch = np.repeat(base, len(positions) + 1, axis=0)
    for k, p in enumerate(positions, start=1):
        index = [k, slice(None), slice(None), slice(None)]
        index[axis] = p
        batch[tuple(index)] += 50.0
    with TorchEngine(net, "cpu", batch_size=len(batch), threads=1) as engine:
        out = engine.forward(batch, blobs)
    moved = {}
    for b in blobs:
        v = out[b].astype(np.float64)
        diff = np.abs(v[1:] - v[:1])
        # any channel of the position: the blob's field is the union over its channels' fields
        tol = 1e-4 * max(1.0, float(np.abs(v).max()))
        changed = (diff > tol).any(axis=1)  # (positions, H, W)
        moved[b] = changed.any(axis=2 if axis == 2 else 1)  # (positions, H or W)
        moved[b] = {p: set(np.flatnonzero(moved[b][k])) for k, p in enumerate(positions)}
    return moved


def test_perturbation_matches_the_computed_fields_exactly(small_net) -> None:
    rf = receptive_fields(small_net)
    assert rf["cat"].size == (max(13 + 2 * 4, 13 + 4 * 4), 13 + 2 * 4)  # union of LRN(3) and the 5x3 conv
    assert rf["pool2"].jump == (8, 8)
    assert rf["crop"].describe()["start"] == [-2 + 5, -2 + 9] and rf["crop"].jump == (1, 1)
    assert rf["sum"] is None  # crop (jump 1) + pool1 (jump 4): no affine field
    rng = np.random.default_rng(0)
    base = rng.uniform(-1, 1, size=(1, 3, 29, 29)).astype(np.float32)
    blobs = ["conv1", "conv2", "pool1", "cat", "pool2", "crop"]
    for axis, name in ((2, "y"), (3, "x")):
        moved = _moved(small_net, blobs, base, axis)
        for b in blobs:
            lo, hi = rf[b].clipped(name)
            n = len(lo)
            for p in range(29):
                want = {i for i in range(n) if lo[i] <= p <= hi[i]}
                assert moved[b][p] == want, (b, name, p, sorted(moved[b][p]), sorted(want))


def test_perturbation_caffenet_pool5(caffenet_dir) -> None:
    """CaffeNet (ReLU, max pooling, LRN; random weights): the first pixel inside pool5's and conv1's
    field moves the unit, the last one outside does not."""
    net = load_net(caffenet_dir / "deploy.prototxt", caffenet_dir / "weights.caffemodel")
    rf = receptive_fields(net)
    rng = np.random.default_rng(1)
    base = (rng.uniform(-60, 60, size=(1, 3, 227, 227))).astype(np.float32)
    # pool5's 195-pixel field never fits inside the 227-pixel image with a pixel to spare on both sides:
    # each side is checked where it lies inside the image
    checks = {"pool5": (2, 3), "conv1": (5, 7), "conv3": (6, 4)}
    for axis, name in ((2, "y"), (3, "x")):
        cols = set()
        for b, (iy, ix) in checks.items():
            i = iy if name == "y" else ix
            lo, hi = rf[b].clipped(name)
            cols |= {int(lo[i]) - 1, int(lo[i]), int(hi[i]), int(hi[i]) + 1}
        cols = sorted(c for c in cols if 0 <= c < 227)
        moved = _moved(net, list(checks), base, axis, cols)
        sides = 0
        for b, (iy, ix) in checks.items():
            i = iy if name == "y" else ix
            lo, hi = int(rf[b].clipped(name)[0][i]), int(rf[b].clipped(name)[1][i])
            assert i in moved[b][lo] and i in moved[b][hi], (b, name)
            for outside in (lo - 1, hi + 1):
                if 0 <= outside < 227:
                    assert i not in moved[b][outside], (b, name, outside)
                    sides += 1
        assert sides >= 4
