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
from savedeep.caffe.prototxt import parse_text
from savedeep.caffe.model import REFUSED_TYPES
from tests.nets import GENERATED_CASES, LAYER_CASES, S, channel_err, layer, make_caffemodel, rel_err, write_net

# What the torch engine achieves against pycaffe on one layer, with margin: worst measured 2.9e-7
# (whole blob) and 4.7e-7 (channel by channel) over every case (tests/nets.py: rel_err, channel_err).
TOLERANCE = 1e-5

torch.set_num_threads(1)


def _layer(text: str) -> SimpleNamespace:
    """A Layer-like object from one layer's prototxt text (no weights)."""
    lp = parse_text(text, "LayerParameter")
    return SimpleNamespace(name=lp.name, type=lp.type, bottoms=list(lp.bottom), tops=list(lp.top), param=lp, blobs=[])


def _compare_with_pycaffe(
    pycaffe, tmp_path, case: str, shape: tuple[int, ...], body: str, channels_last: bool = False
) -> None:
    """Run the one-layer net in both engines on the same seeded weights and input; every blob must agree."""
    from savedeep.engines.caffe_engine import CaffeEngine
    from savedeep.caffe.model import load_net

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
    print(
        f"\n{case} ({layout}): max relative error {max(errors.values()):.2e}, "
        f"per channel {max(per_channel.values()):.2e} ({per_channel})"
    )
    assert max(errors.values()) <= TOLERANCE, errors
    assert max(per_channel.values()) <= TOLERANCE, per_channel


@pytest.mark.caffe
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_matches_pycaffe(case, channels_last, pycaffe, tmp_path):
    shape, body = LAYER_CASES[case]
    _compare_with_pycaffe(pycaffe, tmp_path, case, shape, body, channels_last)


@pytest.mark.caffe
@pytest.mark.parametrize("case", sorted(GENERATED_CASES))
def test_generated_layer_matches_pycaffe(case, pycaffe, tmp_path):
    """A seeded spread of each layer's parameters (tests/nets.py: generated_cases), on both engines."""
    shape, body = GENERATED_CASES[case]
    _compare_with_pycaffe(pycaffe, tmp_path, case, shape, body)


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
    op = build_layer(
        _layer(
            f'name: "p" type: "Pooling" bottom: "a" top: "b" '
            f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} }}"
        )
    )
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
    across = build_layer(
        _layer('name: "n" type: "LRN" bottom: "a" top: "b" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }')
    )
    sq = np.pad(xd**2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    ref = xd * (2 + 0.3 / 5 * sum(sq[:, i : i + 7] for i in range(5))) ** -0.75
    assert np.abs(across(torch.from_numpy(x))[0].numpy() - ref).max() < 1e-5
    within = build_layer(
        _layer(
            'name: "n" type: "LRN" bottom: "a" top: "b" '
            "lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 5 norm_region: WITHIN_CHANNEL }"
        )
    )
    sq = np.pad(xd**2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = xd * (1 + 0.3 / 9 * sum(sq[:, :, i : i + 5, j : j + 6] for i in range(3) for j in range(3))) ** -0.75
    assert np.abs(within(torch.from_numpy(x))[0].numpy() - ref).max() < 1e-5


def test_unknown_layer_type_names_type_and_layer():
    with pytest.raises(UnsupportedLayerError, match=r"'odd'.*'Axpy'.*engine 'caffe'"):
        build_layer(_layer('name: "odd" type: "Axpy" bottom: "a" top: "b"'))


def _torch_forward(tmp_path, body: str, shape: tuple[int, ...], x: np.ndarray) -> dict[str, np.ndarray]:
    """Every blob of a weightless net in the torch engine, after checking its shapes against the model reader's."""
    from savedeep.caffe.model import load_net

    net = load_net(write_net(tmp_path, "net", body, shape))
    engine = TorchEngine(net, "cpu", batch_size=shape[0], threads=1)
    try:
        out = engine.forward(x, net.blobs)
    finally:
        engine.close()
    for b in net.blobs:
        assert out[b].shape == (shape[0], *engine.blob_shapes[b]) == net.blob_shapes(shape[0])[b], b
    return out


def _caffe_stochastic_test_pool(
    x: np.ndarray, k: int | tuple[int, int], s: int | tuple[int, int], p: int | tuple[int, int]
) -> np.ndarray:
    """Caffe's test-time STOCHASTIC pooling (StoPoolForwardTest in pooling_layer.cu), in numpy loops:
    windows start at o * stride (pad only enters the output size), are clipped to the input, and give
    sum(x^2) / sum(x) where sum(x) > 0, else 0."""
    (kh, kw), (sh, sw), (ph_, pw_) = ((v, v) if isinstance(v, int) else v for v in (k, s, p))
    n, c, h, w = x.shape
    oh, ow = caffe_pool_size(h, kh, sh, ph_), caffe_pool_size(w, kw, sw, pw_)
    y = np.zeros((n, c, oh, ow))
    for ph in range(oh):
        for pw in range(ow):
            win = x[:, :, ph * sh : min(ph * sh + kh, h), pw * sw : min(pw * sw + kw, w)].reshape(n, c, -1)
            total, squares = win.sum(axis=2), (win**2).sum(axis=2)
            y[:, :, ph, pw] = np.where(total > 0, squares / np.where(total > 0, total, 1), 0)
    return y


@pytest.mark.parametrize(
    "h,w,k,s,p",
    [(7, 9, 3, 2, 0), (6, 6, 3, 2, 1), (8, 5, 2, 2, 1), (10, 11, 4, 3, 2), (5, 5, 5, 1, 0), (9, 7, 2, 1, 0)],
)
def test_stochastic_pooling_follows_caffe_test_kernel(h, w, k, s, p, tmp_path):
    # Mostly non-negative input (as after a ReLU, where stochastic pooling is used), some windows all zero
    x = np.maximum(np.random.default_rng(5).normal(0.2, 1.0, size=(2, 3, h, w)), 0).astype(np.float32)
    x[0, 0, :2, :2] = 0
    out = _torch_forward(
        tmp_path,
        layer("p", "Pooling", "data", "p", "pooling_param", pool="STOCHASTIC", kernel_size=k, stride=s, pad=p),
        x.shape,
        x,
    )["p"]
    ref = _caffe_stochastic_test_pool(x.astype(np.float64), k, s, p)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-6 * np.abs(ref).max()


def test_spp_stochastic_is_the_stochastic_pooling_of_each_level(tmp_path):
    x = np.abs(np.random.default_rng(6).normal(size=(2, 3, 9, 10))).astype(np.float32)
    out = _torch_forward(
        tmp_path, layer("s", "SPP", "data", "s", "spp_param", pyramid_height=2, pool="STOCHASTIC"), x.shape, x
    )["s"]
    xd = x.astype(np.float64)
    level0 = _caffe_stochastic_test_pool(xd, (9, 10), (9, 10), 0)  # one bin: the whole map
    # level 1: 2x2 bins, kernel (5, 5), pad (1, 0), which enters only the output size (2 x 2)
    level1 = _caffe_stochastic_test_pool(xd, 5, 5, (1, 0))
    ref = np.concatenate([level0.reshape(2, -1), level1.reshape(2, -1)], axis=1)
    assert out.shape == ref.shape == (2, 3 * (1 + 4))
    assert np.abs(out - ref).max() <= 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.7), (0.0, 6.0), (0.3, 0.3), (0.5, -0.5)])
def test_clip_follows_caffe_formula(lo, hi, tmp_path):
    """BVLC Caffe's Clip (not in the fork pycaffe is built from): max(min, min(x, max)), so min wins over max."""
    x = np.random.default_rng(1).normal(size=S).astype(np.float32)
    # a new top, and an in-place one (the engine may write it into its bottom)
    body = (
        layer("c", "Clip", "data", "c", "clip_param", min=lo, max=hi)
        + layer("t", "TanH", "data", "t")
        + layer("i", "Clip", "t", "t", "clip_param", min=lo, max=hi)
    )
    out = _torch_forward(tmp_path, body, S, x)

    def ref(v: np.ndarray) -> np.ndarray:
        return np.maximum(np.float32(lo), np.minimum(v, np.float32(hi)))

    assert np.array_equal(out["c"], ref(x))
    assert np.abs(out["t"] - ref(np.tanh(x))).max() <= 1e-6


def test_clip_without_min_or_max_is_refused(tmp_path):
    from savedeep.caffe.model import load_net

    with pytest.raises(ModelError, match="clip_param needs both min and max"):
        load_net(write_net(tmp_path, "net", layer("c", "Clip", "data", "c", "clip_param", max=1), S))


@pytest.mark.parametrize("beta", [1.0, 0.5, -2.0])
def test_swish_follows_caffe_formula(beta, tmp_path):
    """BVLC Caffe's Swish (not in the fork pycaffe is built from): x * sigmoid(beta * x)."""
    x = np.random.default_rng(2).normal(size=S).astype(np.float32) * 4
    params = {} if beta == 1.0 else {"beta": beta}
    out = _torch_forward(tmp_path, layer("s", "Swish", "data", "s", "swish_param" if params else None, **params), S, x)
    xd = x.astype(np.float64)
    ref = xd / (1 + np.exp(-beta * xd))
    assert np.abs(out["s"] - ref).max() <= 1e-6 * np.abs(ref).max()


def test_embed_refuses_indices_outside_its_rows(tmp_path):
    from savedeep.caffe.model import load_net
    from savedeep.caffe.synthetic import random_weights, write_caffemodel

    prototxt = write_net(tmp_path, "net", layer("e", "Embed", "data", "e", "embed_param", num_output=2, input_dim=3), S)
    net = load_net(prototxt)
    write_caffemodel(tmp_path / "w.caffemodel", net, random_weights(net, seed=0))
    net = load_net(prototxt, tmp_path / "w.caffemodel")
    engine = TorchEngine(net, "cpu", batch_size=S[0], threads=1)
    x = np.full(S, 2.0, np.float32)
    assert engine.forward(x, ["e"])["e"].shape == (S[0], *S[1:], 2)
    x[1, 2, 3, 4] = 3
    with pytest.raises(ModelError, match=r"'e'.*outside \[0, 3\)"):
        engine.forward(x, ["e"])
    engine.close()


@pytest.mark.parametrize("type_", sorted(REFUSED_TYPES))
def test_refused_caffe_layer_types_say_why(type_, tmp_path):
    from savedeep.caffe.model import load_net

    body = layer("x", type_, "data", "x")
    with pytest.raises(UnsupportedLayerError) as info:
        load_net(write_net(tmp_path, "net", body, S))
    message = str(info.value)
    assert "\n" not in message and f"layer 'x' has type '{type_}'" in message
    assert REFUSED_TYPES[type_] in message


@pytest.mark.parametrize(
    "body",
    [
        layer("r", "Reduction", "data", "r", "reduction_param", axis=0),
        layer("r", "Reduction", "data", "r", "reduction_param", axis=-4),
        layer("t", "Tile", "data", "t", "tile_param", axis=0, tiles=2),
    ],
    ids=["reduction_axis0", "reduction_axis_m4", "tile_axis0"],
)
def test_layers_over_the_batch_axis_are_refused(body, tmp_path):
    from savedeep.caffe.model import load_net

    with pytest.raises(ModelError, match="batch axis.*one row per image"):
        load_net(write_net(tmp_path, "net", body, S))


def test_spp_too_deep_for_its_input_is_refused(tmp_path):
    from savedeep.caffe.model import load_net

    # 5 rows in 4 bins: kernel 2 needs pad 2, which Caffe's pooling refuses (pad < kernel)
    with pytest.raises(ModelError, match="pyramid level 2"):
        load_net(
            write_net(tmp_path, "net", layer("s", "SPP", "data", "s", "spp_param", pyramid_height=3), (1, 3, 5, 8))
        )


@pytest.mark.caffe
@pytest.mark.parametrize(
    "body,match",
    [
        (layer("c", "Clip", "data", "c", "clip_param", min=0, max=1), "'Clip', which this pycaffe .* does not have"),
        (layer("s", "Swish", "data", "s"), "'Swish', which this pycaffe .* does not have"),
        (layer("p", "Pooling", "data", "p", "pooling_param", pool="STOCHASTIC", kernel_size=2), "only on a GPU"),
        (layer("s", "SPP", "data", "s", "spp_param", pyramid_height=2, pool="STOCHASTIC"), "only on a GPU"),
    ],
    ids=["clip", "swish", "stochastic", "spp_stochastic"],
)
def test_caffe_engine_refuses_what_pycaffe_would_abort_on(body, match, pycaffe, tmp_path):
    """pycaffe aborts the process (glog FATAL) on these; the caffe engine refuses them in one line first."""
    from savedeep.engines.caffe_engine import CaffeEngine
    from savedeep.caffe.model import load_net

    prototxt = write_net(tmp_path, "net", body, S)
    with pytest.raises(UnsupportedLayerError, match=match):
        CaffeEngine(prototxt, tmp_path / "none.caffemodel", load_net(prototxt), "cpu", batch_size=2, threads=1)


def test_layer_with_weights_but_no_weights_file_is_a_model_error():
    with pytest.raises(ModelError, match="needs 2 weight blob"):
        build_layer(
            _layer(
                'name: "c" type: "Convolution" bottom: "a" top: "b" convolution_param { num_output: 2 kernel_size: 1 }'
            )
        )


def test_every_case_runs_in_torch_with_model_shapes(tmp_path):
    """Without pycaffe: every layer case runs and gives the shapes the model reader infers."""
    from savedeep.caffe.synthetic import random_weights, write_caffemodel
    from savedeep.caffe.model import load_net

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
