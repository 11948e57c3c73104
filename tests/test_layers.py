"""Each Caffe layer type, in a net of its own, gives the same numbers in the torch engine as in pycaffe.

Without pycaffe the comparison tests skip (locally) and the pure-torch checks
against Caffe's own loop arithmetic (pooling, LRN) still run.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from savedeep.engines.torch_engine import TorchEngine
from savedeep.engines.torch_layers import build_layer, caffe_pool_size
from savedeep.errors import ModelError, UnsupportedLayerError
from savedeep.prototxt import parse_text
from tests.nets import LAYER_CASES, channel_err, make_caffemodel, rel_err, write_net

# What the torch engine achieves against pycaffe on one layer, with margin: worst measured 2.9e-7
# (whole blob) and 4.7e-7 (channel by channel) over every case (tests/nets.py: rel_err, channel_err).
TOLERANCE = 1e-5

torch.set_num_threads(1)


def _layer(text: str) -> SimpleNamespace:
    """A Layer-like object from one layer's prototxt text (no weights)."""
    lp = parse_text(text, "LayerParameter")
    return SimpleNamespace(name=lp.name, type=lp.type, bottoms=list(lp.bottom), tops=list(lp.top), param=lp, blobs=[])


@pytest.mark.caffe
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_matches_pycaffe(case, channels_last, pycaffe, tmp_path):
    from savedeep.engines.caffe_engine import CaffeEngine
    from savedeep.model import load_net

    shape, body = LAYER_CASES[case]
    prototxt = write_net(tmp_path, case, body, shape)
    overrides = {("bn", 2): np.zeros(1, np.float32)} if case == "batchnorm_zero_factor" else None
    weights = make_caffemodel(pycaffe, prototxt, tmp_path / "weights.caffemodel", seed=7, overrides=overrides)
    net = load_net(prototxt, weights)
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)

    caffe_engine = CaffeEngine(prototxt, weights, net, "cpu", batch_size=shape[0], threads=1)
    torch_engine = TorchEngine(net, "cpu", batch_size=shape[0], threads=1, channels_last=channels_last)
    try:
        assert torch_engine.blob_shapes == caffe_engine.blob_shapes
        expected = caffe_engine.forward(x, net.blobs)
        got = torch_engine.forward(x, net.blobs)
    finally:
        caffe_engine.close()
        torch_engine.close()
    errors = {b: rel_err(got[b], expected[b]) for b in net.blobs}
    per_channel = {b: channel_err(got[b], expected[b]) for b in net.blobs}
    layout = "channels_last" if channels_last else "nchw"
    print(f"\n{case} ({layout}): max relative error {max(errors.values()):.2e}, "
          f"per channel {max(per_channel.values()):.2e} ({per_channel})")
    assert max(errors.values()) <= TOLERANCE, errors
    assert max(per_channel.values()) <= TOLERANCE, per_channel


def _caffe_pool_loops(x: np.ndarray, k: int, s: int, p: int, method: str) -> np.ndarray:
    """Caffe's pooling_layer.cpp forward loops, transcribed in numpy (the reference without pycaffe)."""
    n, c, h, w = x.shape
    oh, ow = caffe_pool_size(h, k, s, p), caffe_pool_size(w, k, s, p)
    y = np.zeros((n, c, oh, ow))
    for ph in range(oh):
        for pw in range(ow):
            hs, ws = ph * s - p, pw * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            size = (he - hs) * (we - ws)
            win = x[:, :, max(hs, 0) : min(he, h), max(ws, 0) : min(we, w)]
            y[:, :, ph, pw] = win.max(axis=(2, 3)) if method == "MAX" else win.sum(axis=(2, 3)) / size
    return y


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    "h,w,k,s,p",
    [(7, 9, 3, 2, 1), (6, 6, 3, 2, 0), (8, 5, 2, 2, 1), (13, 13, 3, 2, 0), (10, 11, 4, 3, 2), (5, 5, 5, 1, 2)],
)
def test_pooling_follows_caffe_loops(method, h, w, k, s, p):
    x = np.random.default_rng(0).normal(size=(2, 3, h, w)).astype(np.float32)
    op = build_layer(_layer(
        f'name: "p" type: "Pooling" bottom: "a" top: "b" '
        f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} }}"
    ))
    y = op(torch.from_numpy(x))[0].numpy()
    ref = _caffe_pool_loops(x.astype(np.float64), k, s, p, method)
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max())


def test_pool_size_rounds_up_and_drops_a_window_in_the_padding():
    assert caffe_pool_size(6, 3, 2, 0) == 3  # ceil((6-3)/2)+1, torch's floor would give 2
    assert caffe_pool_size(10, 4, 3, 2) == 4  # ceil gives 5, but window 5 would start in the padding
    assert caffe_pool_size(6, 3, 2, 0, ceil=False) == 2
    assert caffe_pool_size(227, 3, 2, 0) == 113


def test_lrn_matches_caffe_formulas():
    x = np.random.default_rng(1).normal(size=(2, 7, 5, 6)).astype(np.float32)
    xd = x.astype(np.float64)
    across = build_layer(_layer(
        'name: "n" type: "LRN" bottom: "a" top: "b" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }'
    ))
    sq = np.pad(xd**2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    ref = xd * (2 + 0.3 / 5 * sum(sq[:, i : i + 7] for i in range(5))) ** -0.75
    assert np.abs(across(torch.from_numpy(x))[0].numpy() - ref).max() < 1e-5
    within = build_layer(_layer(
        'name: "n" type: "LRN" bottom: "a" top: "b" '
        "lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 5 norm_region: WITHIN_CHANNEL }"
    ))
    sq = np.pad(xd**2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = xd * (1 + 0.3 / 9 * sum(sq[:, :, i : i + 5, j : j + 6] for i in range(3) for j in range(3))) ** -0.75
    assert np.abs(within(torch.from_numpy(x))[0].numpy() - ref).max() < 1e-5


def test_unknown_layer_type_names_type_and_layer():
    with pytest.raises(UnsupportedLayerError, match=r"'odd'.*'SPP'.*engine 'caffe'"):
        build_layer(_layer('name: "odd" type: "SPP" bottom: "a" top: "b"'))


def test_stochastic_pooling_is_unsupported():
    with pytest.raises(UnsupportedLayerError, match="STOCHASTIC"):
        build_layer(_layer(
            'name: "p" type: "Pooling" bottom: "a" top: "b" pooling_param { pool: STOCHASTIC kernel_size: 2 }'
        ))


def test_layer_with_weights_but_no_weights_file_is_a_model_error():
    with pytest.raises(ModelError, match="needs 2 weight blob"):
        build_layer(_layer(
            'name: "c" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 2 kernel_size: 1 }'
        ))


def test_every_case_runs_in_torch_with_model_shapes(tmp_path):
    """Without pycaffe: every layer case runs and gives the shapes the model reader infers."""
    from savedeep.synthetic import random_weights, write_caffemodel
    from savedeep.model import load_net

    for case, (shape, body) in sorted(LAYER_CASES.items()):
        prototxt = write_net(tmp_path / case, case, body, shape)
        net = load_net(prototxt)
        weights = tmp_path / case / "weights.caffemodel"
        write_caffemodel(weights, net, random_weights(net, seed=1))
        net = load_net(prototxt, weights)
        engine = TorchEngine(net, "cpu", batch_size=shape[0])
        out = engine.forward(np.random.default_rng(0).normal(size=shape).astype(np.float32), net.blobs)
        for b in net.blobs:
            assert out[b].shape == (shape[0], *engine.blob_shapes[b]), (case, b)
            assert out[b].dtype == np.float32
            assert np.isfinite(out[b]).all() or case == "batchnorm_zero_factor", (case, b)
        assert math.isfinite(float(np.abs(out[net.blobs[-1]]).max()))
