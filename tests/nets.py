"""Test helpers for the engines: tiny one-layer nets, random weights saved by pycaffe, real inputs.

Every case in LAYER_CASES is the body of a prototxt whose input is the blob
``data``; ``write_net`` prepends the Input layer. Geometries are chosen to hit
Caffe's edge rules (odd sizes, ceil pooling, windows clipped by padding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

INPUT = """name: "{name}"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}
"""


def write_net(directory: Path, name: str, body: str, shape: tuple[int, ...]) -> Path:
    """Write `body` after an Input layer of `shape` into directory/deploy.prototxt and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    dims = " ".join(f"dim: {d}" for d in shape)
    path = directory / "deploy.prototxt"
    path.write_text(INPUT.format(name=name, dims=dims) + body)
    return path


def conv(name: str, bottom: str, top: str, **params: Any) -> str:
    """A Convolution layer's text with the given convolution_param fields."""
    return _layer(name, "Convolution", [bottom], [top], "convolution_param", params)


def _layer(name: str, type_: str, bottoms: list[str], tops: list[str], pname: str | None, params: dict) -> str:
    lines = [f'layer {{ name: "{name}" type: "{type_}"']
    lines += [f'  bottom: "{b}"' for b in bottoms]
    lines += [f'  top: "{t}"' for t in tops]
    if pname:
        inner = " ".join(_field(k, v) for k, v in params.items())
        lines.append(f"  {pname} {{ {inner} }}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _field(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_field(key, v) for v in value)
    if isinstance(value, bool):
        return f"{key}: {'true' if value else 'false'}"
    if isinstance(value, dict):
        return f"{key} {{ " + " ".join(_field(k, v) for k, v in value.items()) + " }"
    return f"{key}: {value}"


def layer(
    name: str, type_: str, bottoms: str | list[str], tops: str | list[str], pname: str | None = None, **params: Any
) -> str:
    """One layer's prototxt text; `params` become fields of the `pname` message."""
    b = [bottoms] if isinstance(bottoms, str) else bottoms
    t = [tops] if isinstance(tops, str) else tops
    return _layer(name, type_, b, t, pname, params)


S = (2, 3, 9, 11)  # default input: odd sizes so that ceil pooling and padding rules matter
S6 = (2, 6, 8, 7)
P = "pooling_param"

# case name -> (input shape, prototxt body)
LAYER_CASES: dict[str, tuple[tuple[int, ...], str]] = {
    "conv": (S, conv("c", "data", "c", num_output=4, kernel_size=3, pad=1, stride=2)),
    "conv_hw_nobias": (
        S,
        conv(
            "c",
            "data",
            "c",
            num_output=5,
            kernel_h=3,
            kernel_w=2,
            pad_h=1,
            pad_w=0,
            stride_h=2,
            stride_w=1,
            bias_term=False,
        ),
    ),
    "conv_group_dilation": (S6, conv("c", "data", "c", num_output=4, kernel_size=3, group=2, dilation=2, pad=2)),
    "conv_two_bottoms": (
        S6,
        layer("sl", "Slice", "data", ["a", "b"], "slice_param", axis=1)
        + layer("c", "Convolution", ["a", "b"], ["ca", "cb"], "convolution_param", num_output=2, kernel_size=2),
    ),
    "deconv": (
        S,
        layer("d", "Deconvolution", "data", "d", "convolution_param", num_output=4, kernel_size=4, stride=2, pad=1),
    ),
    "deconv_group": (
        S6,
        layer(
            "d",
            "Deconvolution",
            "data",
            "d",
            "convolution_param",
            num_output=4,
            kernel_size=3,
            stride=3,
            group=2,
            bias_term=False,
        ),
    ),
    "pool_max_ceil": ((2, 3, 8, 11), layer("p", "Pooling", "data", "p", P, pool="MAX", kernel_size=3, stride=2)),
    "pool_max_pad": ((2, 3, 7, 9), layer("p", "Pooling", "data", "p", P, pool="MAX", kernel_size=3, stride=2, pad=1)),
    "pool_max_pad_drop": (
        (2, 3, 10, 11),
        layer("p", "Pooling", "data", "p", P, pool="MAX", kernel_size=4, stride=3, pad=2),
    ),
    "pool_ave_ceil": ((2, 3, 6, 13), layer("p", "Pooling", "data", "p", P, pool="AVE", kernel_size=3, stride=2)),
    "pool_ave_pad": ((2, 3, 7, 9), layer("p", "Pooling", "data", "p", P, pool="AVE", kernel_size=3, stride=2, pad=1)),
    "pool_ave_pad_drop": (
        (2, 3, 10, 11),
        layer("p", "Pooling", "data", "p", P, pool="AVE", kernel_size=4, stride=3, pad=2),
    ),
    "pool_hw": (
        S,
        layer(
            "p", "Pooling", "data", "p", P, pool="AVE", kernel_h=2, kernel_w=3, stride_h=1, stride_w=2, pad_h=1, pad_w=1
        ),
    ),
    "pool_hw_max": (
        S,
        layer(
            "p", "Pooling", "data", "p", P, pool="MAX", kernel_h=3, kernel_w=2, stride_h=2, stride_w=1, pad_h=1, pad_w=1
        ),
    ),
    "pool_global_ave": (S, layer("p", "Pooling", "data", "p", P, pool="AVE", global_pooling=True)),
    "pool_global_max": (S, layer("p", "Pooling", "data", "p", P, pool="MAX", global_pooling=True)),
    "lrn_across": ((2, 7, 5, 6), layer("n", "LRN", "data", "n", "lrn_param", local_size=5, alpha=0.3, beta=0.75, k=2)),
    "lrn_across_beta_wide": (
        (2, 4, 5, 6),
        layer("n", "LRN", "data", "n", "lrn_param", local_size=7, alpha=0.2, beta=0.6, k=1.5),
    ),  # window wider than the channels
    "lrn_across_size1": ((2, 3, 5, 6), layer("n", "LRN", "data", "n", "lrn_param", local_size=1, alpha=0.4, beta=0.9)),
    "lrn_within": (
        (2, 3, 7, 6),
        layer(
            "n", "LRN", "data", "n", "lrn_param", local_size=3, alpha=0.5, beta=0.6, k=1.5, norm_region="WITHIN_CHANNEL"
        ),
    ),
    "ip": (S, layer("f", "InnerProduct", "data", "f", "inner_product_param", num_output=5)),
    "ip_axis2_nobias": (
        S,
        layer("f", "InnerProduct", "data", "f", "inner_product_param", num_output=4, axis=2, bias_term=False),
    ),
    "ip_transpose": (S, layer("f", "InnerProduct", "data", "f", "inner_product_param", num_output=6, transpose=True)),
    "relu": (S, layer("r", "ReLU", "data", "r")),
    "relu_leaky": (S, layer("r", "ReLU", "data", "r", "relu_param", negative_slope=0.1)),
    "prelu": (S, layer("r", "PReLU", "data", "r")),
    "prelu_shared": (S, layer("r", "PReLU", "data", "r", "prelu_param", channel_shared=True)),
    "elu": (S, layer("r", "ELU", "data", "r", "elu_param", alpha=0.7)),
    "sigmoid": (S, layer("r", "Sigmoid", "data", "r")),
    "tanh": (S, layer("r", "TanH", "data", "r")),
    "absval": (S, layer("r", "AbsVal", "data", "r")),
    "power": (
        S,
        layer("a", "AbsVal", "data", "a")
        + layer("r", "Power", "a", "r", "power_param", power=1.5, scale=0.7, shift=0.2),
    ),
    "power_square": (S, layer("r", "Power", "data", "r", "power_param", power=2, scale=-0.5, shift=1)),
    "exp": (S, layer("r", "Exp", "data", "r")),
    "exp_base": (S, layer("r", "Exp", "data", "r", "exp_param", base=2, scale=0.5, shift=0.3)),
    "log": (S, layer("a", "AbsVal", "data", "a") + layer("r", "Log", "a", "r", "log_param", shift=0.5)),
    "log_base": (
        S,
        layer("a", "AbsVal", "data", "a") + layer("r", "Log", "a", "r", "log_param", base=10, scale=2, shift=1),
    ),
    "bnll": (S, layer("r", "BNLL", "data", "r")),
    "dropout": (S, layer("r", "Dropout", "data", "r", "dropout_param", dropout_ratio=0.3)),
    "softmax": (S, layer("r", "Softmax", "data", "r")),
    "softmax_axis": (S, layer("r", "Softmax", "data", "r", "softmax_param", axis=-1)),
    "concat": (
        S,
        conv("c1", "data", "c1", num_output=2, kernel_size=1)
        + conv("c2", "data", "c2", num_output=3, kernel_size=1)
        + layer("cat", "Concat", ["c1", "data", "c2"], "cat"),
    ),
    "concat_axis": (S, layer("cat", "Concat", ["data", "data"], "cat", "concat_param", axis=-1)),
    "concat_dim": (S, layer("cat", "Concat", ["data", "data"], "cat", "concat_param", concat_dim=2)),
    "slice": (S6, layer("s", "Slice", "data", ["a", "b", "c"], "slice_param", slice_point=[1, 4])),
    "slice_equal": ((2, 3, 9, 10), layer("s", "Slice", "data", ["a", "b"], "slice_param", axis=3)),
    "split": (S, layer("s", "Split", "data", ["a", "b"]) + layer("r", "ReLU", "a", "a") + layer("t", "TanH", "b", "t")),
    "eltwise_sum": (
        S,
        layer("t", "TanH", "data", "t") + layer("e", "Eltwise", ["data", "t"], "e", "eltwise_param", coeff=[0.5, -2]),
    ),
    "eltwise_prod": (
        S,
        layer("t", "TanH", "data", "t")
        + layer("e", "Eltwise", ["data", "t", "data"], "e", "eltwise_param", operation="PROD"),
    ),
    "eltwise_max": (
        S,
        layer("t", "TanH", "data", "t") + layer("e", "Eltwise", ["data", "t"], "e", "eltwise_param", operation="MAX"),
    ),
    "batchnorm": (S, layer("bn", "BatchNorm", "data", "bn", "batch_norm_param", eps=0.001)),
    "batchnorm_zero_factor": (S, layer("bn", "BatchNorm", "data", "bn")),
    "batchnorm_batch_stats": (S, layer("bn", "BatchNorm", "data", "bn", "batch_norm_param", use_global_stats=False)),
    "scale": (S, layer("sc", "Scale", "data", "sc")),
    "scale_bias_axes": (S, layer("sc", "Scale", "data", "sc", "scale_param", axis=1, num_axes=2, bias_term=True)),
    "scale_two_bottoms": (
        S,
        layer("g", "Pooling", "data", "g", P, pool="AVE", global_pooling=True)
        + layer("fl", "Flatten", "g", "fl")
        + layer("sc", "Scale", ["data", "fl"], "sc", "scale_param", axis=0, bias_term=True),
    ),
    "bias": (S, layer("b", "Bias", "data", "b", "bias_param", axis=1, num_axes=2)),
    "bias_two_bottoms": (
        S,
        layer("g", "Pooling", "data", "g", P, pool="MAX", global_pooling=True)
        + layer("fl", "Flatten", "g", "fl")
        + layer("b", "Bias", ["data", "fl"], "b", "bias_param", axis=0),
    ),
    "flatten": (S, layer("f", "Flatten", "data", "f")),
    "flatten_axes": (S, layer("f", "Flatten", "data", "f", "flatten_param", axis=1, end_axis=2)),
    "reshape": (S, layer("r", "Reshape", "data", "r", "reshape_param", shape={"dim": [0, -1, 11]})),
    "reshape_axis": (S, layer("r", "Reshape", "data", "r", "reshape_param", shape={"dim": [3, 3]}, axis=2, num_axes=1)),
    "crop": (
        S,
        layer("p", "Pooling", "data", "p", P, pool="MAX", kernel_size=2, stride=2)
        + layer("cr", "Crop", ["data", "p"], "cr", "crop_param", axis=2, offset=[2, 3]),
    ),
    "crop_axis1": (
        S6,
        layer("p", "Pooling", "data", "p", P, pool="AVE", kernel_size=3, stride=2)
        + layer("sl", "Slice", "p", ["p1", "p2"], "slice_param", slice_point=4)
        + layer("cr", "Crop", ["data", "p1"], "cr", "crop_param", axis=1, offset=1),
    ),
    "argmax_axis": (S, layer("a", "ArgMax", "data", "a", "argmax_param", axis=1, top_k=2)),
    "argmax_axis_val": (S, layer("a", "ArgMax", "data", "a", "argmax_param", axis=-1, out_max_val=True, top_k=3)),
    "argmax_flat": (S, layer("a", "ArgMax", "data", "a", "argmax_param", top_k=4, out_max_val=True)),
    # Split, Flatten and Reshape tops share the bottom's memory in Caffe: an in-place
    # write to one of them shows in all (pycaffe's `data` below ends up post-ReLU).
    "alias_flatten_inplace": (
        S,
        layer("f", "Flatten", "data", "f") + layer("r", "ReLU", "f", "f") + layer("t", "TanH", "f", "t"),
    ),
    "alias_reshape_then_read_bottom": (
        S,
        layer("r", "Reshape", "data", "r", "reshape_param", shape={"dim": [0, -1]})
        + layer("p", "Power", "r", "r", "power_param", scale=2, shift=1)
        + layer("sg", "Sigmoid", "data", "sg"),
    ),
    "inplace_chain": (
        S,
        conv("c", "data", "c", num_output=4, kernel_size=3)
        + layer("bn", "BatchNorm", "c", "c")
        + layer("sc", "Scale", "c", "c", "scale_param", bias_term=True)
        + layer("r", "ReLU", "c", "c")
        + layer("p", "Pooling", "c", "p", P, pool="MAX", kernel_size=2, stride=2),
    ),
    "mvn": (S, layer("m", "MVN", "data", "m")),
    "mvn_across_mean_only": (
        S,
        layer("m", "MVN", "data", "m", "mvn_param", across_channels=True, normalize_variance=False),
    ),
    "mvn_across_eps": (S, layer("m", "MVN", "data", "m", "mvn_param", across_channels=True, eps=0.01)),
    "mvn_2d": (
        S,
        layer("f", "InnerProduct", "data", "f", "inner_product_param", num_output=6)
        + layer("m", "MVN", "f", "m", "mvn_param", across_channels=True),
    ),
    "reduction_sum": (S, layer("r", "Reduction", "data", "r", "reduction_param", axis=1)),
    "reduction_asum_axis2": (
        S,
        layer("r", "Reduction", "data", "r", "reduction_param", operation="ASUM", axis=2, coeff=0.5),
    ),
    "reduction_sumsq_last": (S, layer("r", "Reduction", "data", "r", "reduction_param", operation="SUMSQ", axis=-1)),
    "reduction_mean_coeff": (
        S,
        layer("r", "Reduction", "data", "r", "reduction_param", operation="MEAN", axis=-2, coeff=-3),
    ),
    "tile": (S, layer("t", "Tile", "data", "t", "tile_param", tiles=2)),
    "tile_last": (S, layer("t", "Tile", "data", "t", "tile_param", axis=-1, tiles=3)),
    "tile_then_conv": (
        S,
        layer("t", "Tile", "data", "t", "tile_param", axis=2, tiles=2)
        + conv("c", "t", "c", num_output=2, kernel_size=3, stride=2),
    ),
    "spp_max": ((2, 3, 13, 11), layer("s", "SPP", "data", "s", "spp_param", pyramid_height=3)),
    "spp_ave": ((2, 3, 10, 16), layer("s", "SPP", "data", "s", "spp_param", pyramid_height=2, pool="AVE")),
    "spp_one_level": (S, layer("s", "SPP", "data", "s", "spp_param", pyramid_height=1, pool="AVE")),
    "threshold": (S, layer("t", "Threshold", "data", "t")),
    "threshold_value": (S, layer("t", "Threshold", "data", "t", "threshold_param", threshold=0.3)),
    # Embed reads integer indices: an ArgMax over the channels or a Threshold gives them at deploy time
    "embed_argmax": (
        S6,
        layer("a", "ArgMax", "data", "a", "argmax_param", axis=1)
        + layer("e", "Embed", "a", "e", "embed_param", num_output=5, input_dim=6),
    ),
    "embed_threshold_nobias": (
        S,
        layer("t", "Threshold", "data", "t")
        + layer("e", "Embed", "t", "e", "embed_param", num_output=3, input_dim=4, bias_term=False),
    ),
    "im2col": (S, layer("i", "Im2col", "data", "i", "convolution_param", kernel_size=3, stride=2, pad=1)),
    "im2col_dilation_hw": (
        S6,
        layer(
            "i",
            "Im2col",
            "data",
            "i",
            "convolution_param",
            kernel_h=2,
            kernel_w=3,
            dilation=2,
            stride_h=1,
            stride_w=2,
            pad_h=0,
            pad_w=2,
        ),
    ),
}


def generated_cases(seed: int = 29, per_type: int = 6) -> dict[str, tuple[tuple[int, ...], str]]:
    """Single-layer nets with parameters drawn from a seeded generator: a spread of each layer's options.

    Deterministic (the same cases on every run and machine), and valid for Caffe by construction:
    group divides the channels and num_output, pooling's pad is below its kernel, every output is
    non-empty. Names say the drawn parameters, so a failing case can be rebuilt by hand.
    """
    rng = np.random.default_rng(seed)
    cases: dict[str, tuple[tuple[int, ...], str]] = {}

    def pick(*options: Any) -> Any:
        return options[int(rng.integers(len(options)))]

    def add(kind: str, shape: tuple[int, ...], body: str, params: dict) -> None:
        name = kind + "_" + "_".join(f"{k}{_short(v)}" for k, v in params.items())
        cases[name] = (shape, body)

    for _ in range(per_type):  # Convolution and Deconvolution: group, kernel, stride, pad, dilation, bias
        for kind in ("Convolution", "Deconvolution"):
            group = pick(1, 2, 3)
            c, n = group * pick(1, 2), group * pick(1, 2)
            kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
            params = dict(
                num_output=n,
                kernel_h=kh,
                kernel_w=kw,
                stride_h=int(rng.integers(1, 4)),
                stride_w=int(rng.integers(1, 4)),
                pad_h=int(rng.integers(0, 3)),
                pad_w=int(rng.integers(0, 3)),
                dilation=pick(1, 2),
                group=group,
                bias_term=bool(rng.integers(2)),
            )
            shape = (2, c, int(rng.integers(9, 14)), int(rng.integers(9, 14)))
            add(kind.lower()[:6], shape, layer("x", kind, "data", "x", "convolution_param", **params), params)
    for _ in range(2 * per_type):  # Pooling: method, kernel, stride, pad, ceil or floor rounding
        k = int(rng.integers(2, 5))
        params = dict(
            pool=pick("MAX", "AVE"),
            kernel_size=k,
            stride=int(rng.integers(1, 4)),
            pad=int(rng.integers(0, k)),
            ceil_mode=bool(rng.integers(2)),
        )
        shape = (2, 3, int(rng.integers(6, 14)), int(rng.integers(6, 14)))
        add("pool", shape, layer("x", "Pooling", "data", "x", P, **params), params)
    for _ in range(per_type):  # InnerProduct: axis, bias, transpose
        params = dict(
            num_output=int(rng.integers(1, 7)),
            axis=pick(1, 2, -1),
            bias_term=bool(rng.integers(2)),
            transpose=bool(rng.integers(2)),
        )
        add("ip", S, layer("x", "InnerProduct", "data", "x", "inner_product_param", **params), params)
    for _ in range(per_type):  # Im2col: kernel, stride, pad, dilation
        params = dict(
            kernel_size=int(rng.integers(1, 4)),
            stride=int(rng.integers(1, 3)),
            pad=int(rng.integers(0, 3)),
            dilation=pick(1, 2),
        )
        add("im2col", S, layer("x", "Im2col", "data", "x", "convolution_param", **params), params)
    for _ in range(per_type):  # Reduction: operation, axis, coeff
        params = dict(
            operation=pick("SUM", "ASUM", "SUMSQ", "MEAN"), axis=pick(1, 2, 3, -1, -2), coeff=pick(1.0, 0.5, -2.0)
        )
        add("reduction", S, layer("x", "Reduction", "data", "x", "reduction_param", **params), params)
    for _ in range(per_type):  # Tile: axis, tiles
        params = dict(axis=pick(1, 2, 3, -1), tiles=int(rng.integers(1, 4)))
        add("tile", S, layer("x", "Tile", "data", "x", "tile_param", **params), params)
    for _ in range(per_type):  # MVN: variance on/off, across channels, eps
        params = dict(
            normalize_variance=bool(rng.integers(2)), across_channels=bool(rng.integers(2)), eps=pick(1e-9, 1e-3, 0.5)
        )
        add("mvn", S, layer("x", "MVN", "data", "x", "mvn_param", **params), params)
    for _ in range(per_type):  # SPP: pyramid height and method, on sizes where every level fits Caffe's pooling
        height = int(rng.integers(1, 4))
        sizes = [v for v in range(5, 20) if _spp_fits(v, height)]
        params = dict(pyramid_height=height, pool=pick("MAX", "AVE"))
        shape = (2, 3, pick(*sizes), pick(*sizes))
        add("spp", shape, layer("x", "SPP", "data", "x", "spp_param", **params), params)
    for _ in range(per_type):  # Scale and Bias: axis, num_axes, bias
        axis = pick(0, 1, 2, -1)
        ndim_left = 4 - (axis % 4)
        params = dict(axis=axis, num_axes=pick(*range(-1, ndim_left + 1)))
        if pick(True, False):
            params["bias_term"] = bool(rng.integers(2))
            add("scale", S, layer("x", "Scale", "data", "x", "scale_param", **params), params)
        else:
            add("bias", S, layer("x", "Bias", "data", "x", "bias_param", **params), params)
    for _ in range(per_type // 2):  # ReLU's negative slope, Threshold's threshold
        slope = round(float(rng.uniform(-1, 1)), 3)
        add("relu", S, layer("x", "ReLU", "data", "x", "relu_param", negative_slope=slope), dict(negative_slope=slope))
        t = round(float(rng.normal(0, 0.5)), 3)
        add("threshold", S, layer("x", "Threshold", "data", "x", "threshold_param", threshold=t), dict(threshold=t))
    return cases


def _short(v: Any) -> str:
    if isinstance(v, bool):
        return "T" if v else "F"
    return str(v).replace("-", "m").replace(".", "p")


def _spp_fits(size: int, height: int) -> bool:
    """Caffe's SPP sets, at level l, kernel ceil(size / 2^l) and pad half the overhang; pooling needs pad < kernel."""
    for level in range(height):
        bins = 2**level
        kernel = -(-size // bins)
        if (kernel * bins - size + 1) // 2 >= kernel:
            return False
    return True


GENERATED_CASES = generated_cases()


def fill_weights(net: Any, seed: int = 0, overrides: dict[tuple[str, int], np.ndarray] | None = None) -> None:
    """Fill a pycaffe net's params with seeded random values of sensible scale (He-normal weights)."""
    rng = np.random.default_rng(seed)
    overrides = overrides or {}
    for name, blobs in net.params.items():
        type_ = net.layer_dict[name].type
        for i, blob in enumerate(blobs):
            shape = blob.data.shape
            if (name, i) in overrides:
                value = overrides[(name, i)]
            elif type_ in ("Convolution", "Deconvolution", "InnerProduct") and i == 0:
                fan_in = int(np.prod(shape[1:])) if type_ != "Deconvolution" else int(np.prod(shape[2:]) * shape[0] / 4)
                value = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
            elif type_ == "BatchNorm":
                factor = 1.7
                value = [
                    rng.normal(0, 0.5, shape) * factor,
                    rng.uniform(0.5, 2.0, shape) * factor,
                    np.full(shape, factor),
                ][i]
            elif type_ == "Scale" and i == 0:
                value = rng.uniform(0.5, 1.5, shape)
            elif type_ == "PReLU":
                value = rng.uniform(0.05, 0.5, shape)
            else:
                value = rng.normal(0.0, 0.1, shape)
            blob.data[...] = np.asarray(value, np.float32).reshape(shape)


def make_caffemodel(
    caffe: Any, prototxt: Path, path: Path, seed: int = 0, overrides: dict[tuple[str, int], np.ndarray] | None = None
) -> Path:
    """Create random weights for `prototxt` with pycaffe and save them as a real .caffemodel at `path`."""
    net = caffe.Net(str(prototxt), caffe.TEST)
    fill_weights(net, seed, overrides)
    net.save(str(path))
    return path


def photo_batch(photos: list[Path], shape: tuple[int, int, int], mean_bgr: np.ndarray, n: int = 2) -> np.ndarray:
    """n real photos warped to (C, H, W) in BGR with the per-channel mean subtracted (a stand-in preprocessing)."""
    import cv2

    out = np.empty((n, *shape), np.float32)
    for i, path in enumerate(photos[:n]):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert img is not None, path
        img = cv2.resize(img, (shape[2], shape[1]), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        out[i] = (img - mean_bgr.reshape(1, 1, 3)).transpose(2, 0, 1)
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| over the whole blob (``b`` is the reference)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def channel_err(a: np.ndarray, b: np.ndarray, floor: float = 0.1) -> float:
    """The agreement measure between engines (``b`` is the reference), channel by channel.

    For each (image, channel) of an (N, C, ...) blob: max |a - b| over that channel, divided by
    that channel's own max |b|, but by no less than ``floor`` times the whole blob's max |b|
    (a channel that is all zeros after a ReLU has no scale of its own). The result is the worst
    channel. So an error confined to a small channel, or to the border of a feature map, is
    measured against that channel and not diluted by the largest value of the blob (by at most
    1 / ``floor``). An (N, D) blob is one channel per image: its units sum over the same inputs.
    """
    assert a.shape == b.shape, (a.shape, b.shape)
    if b.size == 0:
        return 0.0
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if b.ndim < 3:
        a64, b64 = (
            a64.reshape(len(b64) if b.ndim == 2 else 1, 1, -1),
            b64.reshape(len(b64) if b.ndim == 2 else 1, 1, -1),
        )
    n, c = b64.shape[:2]
    diff = np.abs(a64 - b64).reshape(n, c, -1).max(axis=2)
    scale = np.abs(b64).reshape(n, c, -1).max(axis=2)
    scale = np.maximum(scale, floor * float(scale.max()))
    if float(scale.max()) == 0.0:
        return float(diff.max())
    return float((diff / scale).max())


# A tiny net for runs of thousands of images, where only the pipeline's own costs should show
# (tests/test_runner_load.py, tests/test_runner_sizes.py; benchmarks/bench_scale.py has its own copy).
TINY = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 10 } }
"""
