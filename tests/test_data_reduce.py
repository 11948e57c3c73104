"""Tests for savedeep.data.reduce: pooling against PyTorch, projection reproducibility and geometry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from savedeep.config import BlobSpec, load_config
from savedeep.errors import ConfigError, ModelError
from savedeep.data.reduce import (
    PROJECTION_BLOCK_ROWS,
    PoolReducer,
    ProjectionReducer,
    Reducer,
    adaptive_bins,
    make_reducer,
    projection_matrix,
)

torch.set_num_threads(1)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def batch(shape: tuple[int, ...], n: int = 3, seed: int = 0) -> np.ndarray:
    """Random activations, ReLU-like (non-negative with zeros) as most Caffe blobs are."""
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    return np.maximum(x, 0) * 10


def pool(name: str, mode: str, grid: int | None, dtype: str = "float32") -> BlobSpec:
    return BlobSpec(name, dtype, {"pool": mode, "grid": grid})


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize(
    "size, k", [(13, 1), (13, 2), (13, 3), (13, 5), (13, 13), (55, 2), (55, 7), (27, 4), (6, 4), (7, 6)]
)
def test_bins_are_pytorchs(size: int, k: int) -> None:
    # Pool a ramp: each bin's max is its last index, its min its first.
    ramp = torch.arange(size, dtype=torch.float64).reshape(1, 1, 1, size)
    ends = F.adaptive_max_pool2d(ramp, (1, k)).reshape(-1).numpy() + 1
    starts = -F.adaptive_max_pool2d(-ramp, (1, k)).reshape(-1).numpy()
    np.testing.assert_array_equal(adaptive_bins(size, k), np.stack([starts, ends], axis=1).astype(int))


@pytest.mark.parametrize("mode", ["mean", "max"])
@pytest.mark.parametrize(
    "shape, k",
    [
        ((4, 13, 13), 2),
        ((4, 13, 11), 3),
        ((3, 55, 55), 2),
        ((3, 55, 55), 7),
        ((5, 6, 6), 6),
        ((2, 9, 7), 4),
        ((4, 8, 8), 1),
        ((4, 8, 8), 4),
    ],
)
def test_grid_pooling_matches_torch(mode: str, shape: tuple[int, int, int], k: int) -> None:
    x = batch(shape, seed=k)
    reducer = make_reducer(pool("conv", mode, k), shape)
    assert isinstance(reducer, PoolReducer)
    y = reducer.apply(x)
    reference_op = F.adaptive_avg_pool2d if mode == "mean" else F.adaptive_max_pool2d
    reference = reference_op(torch.from_numpy(x.astype(np.float64)), k).numpy()
    assert y.shape == (x.shape[0], *reducer.out_shape) == (x.shape[0], shape[0], k, k)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    if mode == "max":
        np.testing.assert_array_equal(y, reference.astype(np.float32))
    else:
        np.testing.assert_allclose(y, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_global_pooling(mode: str) -> None:
    shape = (6, 27, 27)
    x = batch(shape)
    reducer = make_reducer(pool("conv2", mode, None), shape)
    y = reducer.apply(x)
    assert reducer.out_shape == (6,) and y.shape == (3, 6) and y.dtype == np.float32
    x64 = x.astype(np.float64)
    expected = x64.mean(axis=(2, 3)) if mode == "mean" else x64.max(axis=(2, 3))
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    # Grid 1 is the same numbers with a 1 x 1 grid kept.
    np.testing.assert_allclose(make_reducer(pool("conv2", mode, 1), shape).apply(x)[:, :, 0, 0], y, rtol=1e-6)


def test_mean_pooling_of_a_constant_is_exact() -> None:
    x = np.full((2, 3, 55, 55), 0.1, dtype=np.float32)
    for grid in (None, 2, 7):
        y = make_reducer(pool("conv1", "mean", grid), (3, 55, 55)).apply(x)
        np.testing.assert_array_equal(y, np.float32(0.1))


def test_pooling_needs_a_three_dimensional_blob() -> None:
    with pytest.raises(ConfigError) as excinfo:
        make_reducer(pool("fc7", "mean", None), (4096,))
    message = str(excinfo.value)
    assert "blob 'fc7' has shape (4096,)" in message and "(C, H, W)" in message and "project" in message
    with pytest.raises(ConfigError, match=r"blob 'x' has shape \(2, 3, 4, 5\)"):
        make_reducer(pool("x", "max", 2), (2, 3, 4, 5))


def test_grid_larger_than_the_blob() -> None:
    with pytest.raises(ConfigError) as excinfo:
        make_reducer(pool("conv5", "max", 14), (256, 13, 13))
    message = str(excinfo.value)
    assert "blobs.conv5.reduce.grid: 14 is larger than blob 'conv5' (256, 13, 13)" in message
    assert "use grid <= 13" in message
    with pytest.raises(ConfigError, match="use grid <= 4"):
        make_reducer(pool("wide", "mean", 5), (8, 9, 4))
    assert make_reducer(pool("conv5", "max", 13), (256, 13, 13)).out_shape == (256, 13, 13)


# --------------------------------------------------------------------------- identity and dtypes


def test_identity_and_storage_dtype() -> None:
    reducer = make_reducer(BlobSpec("fc7", "float16"), (4096,))
    assert type(reducer) is Reducer
    assert reducer.out_shape == (4096,) and reducer.out_dtype == np.dtype(np.float16)
    x = batch((4096,))
    y = reducer.apply(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)
    assert make_reducer(pool("c", "max", 2, "float16"), (3, 4, 4)).out_dtype == np.float16
    assert make_reducer(BlobSpec("c", "float16", {"project": 4, "seed": 0}), (3, 4, 4)).out_dtype == np.float16
    assert make_reducer(BlobSpec("c", "float32", {"project": 4, "seed": 0}), (3, 4, 4)).out_dtype == np.float32


def test_a_batch_of_the_wrong_shape_is_refused() -> None:
    reducer = make_reducer(pool("conv1", "max", 2), (96, 55, 55))
    with pytest.raises(
        ModelError,
        match=r"blob 'conv1': the engine produced shape \(96, 27, 27\) per image, "
        r"but the model declares \(96, 55, 55\)",
    ):
        reducer.apply(np.zeros((1, 96, 27, 27), np.float32))


def test_describe_is_json_and_complete() -> None:
    described = [
        make_reducer(BlobSpec("fc7"), (4096,)).describe(),
        make_reducer(pool("conv1", "max", 2), (96, 55, 55)).describe(),
        make_reducer(BlobSpec("conv3", "float16", {"project": 64, "seed": 5}), (8, 3, 3)).describe(),
    ]
    assert json.loads(json.dumps(described)) == described
    assert described[0] == {
        "blob": "fc7",
        "kind": "none",
        "in_shape": [4096],
        "out_shape": [4096],
        "out_dtype": "float32",
    }
    assert described[1]["row_edges"] == [[0, 28], [27, 55]] and described[1]["pool"] == "max"
    assert described[2]["project"] == 64 and described[2]["seed"] == 5 and described[2]["in_features"] == 72
    assert described[2]["out_dtype"] == "float16" and described[2]["numpy"] == np.__version__


# --------------------------------------------------------------------------- projection


def test_projection_is_the_documented_matrix_product() -> None:
    shape = (4, 5, 5)
    reducer = make_reducer(BlobSpec("conv", "float32", {"project": 16, "seed": 3}), shape)
    assert isinstance(reducer, ProjectionReducer) and reducer.out_shape == (16,)
    x = batch(shape)
    y = reducer.apply(x)
    expected = np.random.default_rng(3).standard_normal((100, 16), dtype=np.float32) * np.float32(1 / np.sqrt(16))
    np.testing.assert_array_equal(reducer.matrix, expected)
    np.testing.assert_allclose(
        y, x.reshape(3, -1).astype(np.float64) @ expected.astype(np.float64), rtol=1e-4, atol=1e-4
    )
    assert y.shape == (3, 16) and y.dtype == np.float32


def test_block_generation_equals_one_draw() -> None:
    rows = 2 * PROJECTION_BLOCK_ROWS + 123
    one_draw = np.random.default_rng(11).standard_normal((rows, 3), dtype=np.float32) * np.float32(1 / np.sqrt(3))
    np.testing.assert_array_equal(projection_matrix(11, rows, 3), one_draw)


def test_projection_matrix_statistics_and_seeds() -> None:
    matrix = projection_matrix(0, 2000, 100)
    assert matrix.dtype == np.float32 and matrix.shape == (2000, 100)
    assert abs(matrix.mean()) < 0.005
    assert matrix.var() == pytest.approx(1 / 100, rel=0.02)
    np.testing.assert_array_equal(projection_matrix(0, 2000, 100), matrix)
    assert not np.array_equal(projection_matrix(1, 2000, 100), matrix)


def test_projection_matrix_is_lazy_and_prepare_builds_it() -> None:
    reducer = make_reducer(BlobSpec("conv", "float32", {"project": 8, "seed": 0}), (2, 3, 3))
    assert isinstance(reducer, ProjectionReducer)
    assert reducer._matrix is None  # the parent only plans shapes: no matrix there
    reducer.prepare()
    assert reducer._matrix is not None and reducer._matrix.shape == (18, 8)


def test_projection_too_large_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"a projection of 290400 features to 4096 needs a 4\.4 GiB matrix"):
        make_reducer(BlobSpec("conv1", "float32", {"project": 4096, "seed": 0}), (96, 55, 55))


_DIGEST_SCRIPT = """
import hashlib, sys
from savedeep.config import BlobSpec
from savedeep.data.reduce import make_reducer
r = make_reducer(BlobSpec("conv3", "float32", {"project": 32, "seed": 7}), (3, 40, 40))
r.prepare()
sys.stdout.write(hashlib.sha256(r.matrix.tobytes()).hexdigest())
"""


def test_projection_is_reproducible_across_processes() -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "random"}
    digests = [
        subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=CONFIGS.parent,
            timeout=120,
        ).stdout
        for _ in range(2)
    ]
    here = hashlib.sha256(projection_matrix(7, 3 * 40 * 40, 32).tobytes()).hexdigest()
    assert digests == [here, here]


def test_projection_roughly_preserves_distances() -> None:
    # Johnson-Lindenstrauss: for D = 512 a distance ratio has a spread of about
    # 1/sqrt(2D) = 3%; 0.8..1.2 leaves room for the extremes of 190 pairs.
    shape = (32, 8, 8)
    points = batch(shape, n=20, seed=4)
    reducer = make_reducer(BlobSpec("conv", "float32", {"project": 512, "seed": 2}), shape)
    projected = reducer.apply(points).astype(np.float64)
    flat = points.reshape(20, -1).astype(np.float64)
    i, j = np.triu_indices(20, k=1)
    before = np.linalg.norm(flat[i] - flat[j], axis=1)
    after = np.linalg.norm(projected[i] - projected[j], axis=1)
    ratios = after / before
    assert 0.8 < ratios.min() and ratios.max() < 1.2
    assert abs(ratios.mean() - 1) < 0.03
    # Norms too (distances to the origin).
    norm_ratios = np.linalg.norm(projected, axis=1) / np.linalg.norm(flat, axis=1)
    assert 0.8 < norm_ratios.min() and norm_ratios.max() < 1.2


# --------------------------------------------------------------------------- with the shipped config


def test_conv_f16_config_on_caffenet_shapes(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    config = load_config(
        CONFIGS / "caffenet_conv_f16.yaml", {"model": str(tmp_path / "model"), "images": str(tmp_path / "images")}
    )
    # CaffeNet on a 227 x 227 input: conv1 11/4 -> 55, pool 3/2 -> 27, conv2 pad 2 -> 27, pool -> 13.
    shapes = {
        "conv1": (96, 55, 55),
        "conv2": (256, 27, 27),
        "conv3": (384, 13, 13),
        "conv4": (384, 13, 13),
        "conv5": (256, 13, 13),
    }
    reducers = {spec.name: make_reducer(spec, shapes[spec.name]) for spec in config.blob_specs}
    assert {name: r.out_shape for name, r in reducers.items()} == {
        "conv1": (96, 2, 2),
        "conv2": (256, 2, 2),
        "conv3": (512,),
        "conv4": (384, 13, 13),
        "conv5": (256, 13, 13),
    }
    assert {r.out_dtype for r in reducers.values()} == {np.dtype(np.float16)}
    x = batch(shapes["conv1"], n=2)
    np.testing.assert_array_equal(reducers["conv1"].apply(x), F.adaptive_max_pool2d(torch.from_numpy(x), 2).numpy())
