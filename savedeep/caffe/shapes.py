"""A layer of a Caffe net and Caffe's shape rules: for each layer type, its tops' shapes from its bottoms'.

The rules follow Caffe's ``Reshape`` of each layer (BVLC master) and its geometry
(:func:`conv_geometry`, :func:`pooling_geometry`, :func:`pooled_size`, :func:`spp_levels`),
which the torch engine and the receptive fields use too. :class:`~savedeep.caffe.model.Net`
applies them blob by blob; a :class:`ShapeError` becomes a ModelError naming the layer there.
Split from :mod:`savedeep.caffe.model` (which re-exports these names) to keep the net's reading
and its arithmetic apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from savedeep.caffe.schema import Message

Shape = tuple[int, ...]


@dataclass
class Layer:
    """One layer of the TEST net: name, V2 type, bottoms, tops, its LayerParameter and its weights."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: Message
    blobs: list[np.ndarray] = field(default_factory=list)

    @property
    def inplace(self) -> bool:
        """Whether the layer writes (one of) its bottoms in place."""
        return any(t in self.bottoms for t in self.tops)


class ShapeError(Exception):
    """A layer's parameters do not fit its input shapes (turned into a ModelError naming the layer)."""


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end (ShapeError if out of range)."""
    if not -ndim <= axis < ndim:
        raise ShapeError(f"axis {axis} is out of range for a {ndim}-D blob")
    return axis % ndim


def _same(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [bottoms[0]] * len(layer.tops), []


def _spatial_values(
    name: str, repeated: list[int], h: int | None, w: int | None, n: int, default: int | None
) -> list[int]:
    if h is not None or w is not None:
        if n != 2:
            raise ShapeError(f"{name}_h/{name}_w only work for 2-D spatial input; use {name}")
        if h is None or w is None:
            raise ShapeError(f"give both {name}_h and {name}_w")
        if repeated:
            raise ShapeError(f"give either {name} or {name}_h/{name}_w, not both")
        return [h, w]
    if not repeated:
        if default is None:
            raise ShapeError(f"{name} is required")
        return [default] * n
    if len(repeated) == 1:
        return list(repeated) * n
    if len(repeated) != n:
        raise ShapeError(f"{name} has {len(repeated)} values for {n} spatial axes")
    return list(repeated)


def conv_geometry(p: Message, n_spatial: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Kernel, stride, pad and dilation per spatial axis of a ConvolutionParameter, as Caffe expands them."""
    kernel = _spatial_values(
        "kernel",
        list(p.kernel_size),
        p.kernel_h if p.has("kernel_h") else None,
        p.kernel_w if p.has("kernel_w") else None,
        n_spatial,
        None,
    )
    stride = _spatial_values(
        "stride",
        list(p.stride),
        p.stride_h if p.has("stride_h") else None,
        p.stride_w if p.has("stride_w") else None,
        n_spatial,
        1,
    )
    pad = _spatial_values(
        "pad", list(p.pad), p.pad_h if p.has("pad_h") else None, p.pad_w if p.has("pad_w") else None, n_spatial, 0
    )
    dilation = _spatial_values("dilation", list(p.dilation), None, None, n_spatial, 1)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise ShapeError("kernel, stride and dilation must be positive")
    return kernel, stride, pad, dilation


def _convolution(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.convolution_param
    deconv = layer.type == "Deconvolution"
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    n_spatial = len(shape) - axis - 1
    if n_spatial < 1:
        raise ShapeError("convolution needs at least one spatial axis after the channel axis")
    kernel, stride, pad, dilation = conv_geometry(p, n_spatial)
    channels = shape[axis]
    num_output, group = p.num_output, p.group
    if num_output <= 0:
        raise ShapeError("num_output must be positive")
    if group <= 0 or channels % group or num_output % group:
        raise ShapeError(f"group {group} must divide both the input channels {channels} and num_output {num_output}")
    for other in bottoms[1:]:
        if other != shape:
            raise ShapeError("all bottoms of a convolution must have the same shape")
    out_spatial = []
    for i in range(n_spatial):
        extent = dilation[i] * (kernel[i] - 1) + 1
        size = shape[axis + 1 + i]
        if deconv:
            out_spatial.append(stride[i] * (size - 1) + extent - 2 * pad[i])
        else:
            out_spatial.append((size + 2 * pad[i] - extent) // stride[i] + 1)
    top = tuple(shape[:axis]) + (num_output,) + tuple(out_spatial)
    if deconv:
        weights: Shape = (channels, num_output // group, *kernel)
    else:
        weights = (num_output, channels // group, *kernel)
    params = [weights] + ([(num_output,)] if p.bias_term else [])
    return [top] * len(layer.tops), params


def pooling_geometry(p: Message, height: int, width: int) -> tuple[list[int], list[int], list[int]]:
    """Kernel, stride and pad (h, w) of a PoolingParameter for an input of the given size."""
    if p.global_pooling:
        if p.has("kernel_size") or p.has("kernel_h") or p.has("kernel_w"):
            raise ShapeError("global_pooling takes no kernel size")
        kernel = [height, width]
    elif p.has("kernel_size"):
        kernel = [p.kernel_size, p.kernel_size]
    elif p.has("kernel_h") and p.has("kernel_w"):
        kernel = [p.kernel_h, p.kernel_w]
    else:
        raise ShapeError("give kernel_size or kernel_h and kernel_w (or global_pooling: true)")
    pad = [p.pad_h, p.pad_w] if p.has("pad_h") or p.has("pad_w") else [p.pad, p.pad]
    stride = [p.stride_h, p.stride_w] if p.has("stride_h") or p.has("stride_w") else [p.stride, p.stride]
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride):
        raise ShapeError("kernel and stride must be positive")
    if p.global_pooling and (any(pad) or any(s != 1 for s in stride)):
        raise ShapeError("global_pooling needs pad 0 and stride 1")
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise ShapeError(f"pad {pad} must be smaller than the kernel {kernel}")
    return kernel, stride, pad


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool = True) -> int:
    """Caffe's pooled output size: ceil (or floor) division, last window clipped to start inside the padded input."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pooling(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.pooling_param
    shape = bottoms[0]
    if len(shape) != 4:
        raise ShapeError("pooling needs a 4-D (N, C, H, W) input")
    n, c, h, w = shape
    kernel, stride, pad = pooling_geometry(p, h, w)
    ceil = p.round_mode == "CEIL"
    top = (n, c, pooled_size(h, kernel[0], stride[0], pad[0], ceil), pooled_size(w, kernel[1], stride[1], pad[1], ceil))
    if len(layer.tops) > 1 and p.pool != "MAX":
        raise ShapeError("only MAX pooling has a second (mask) top")
    return [top] * len(layer.tops), []


def _inner_product(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.inner_product_param
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    if p.num_output <= 0:
        raise ShapeError("num_output must be positive")
    k = int(np.prod(shape[axis:], dtype=np.int64))
    n = p.num_output
    weights = (k, n) if p.transpose else (n, k)
    params: list[Shape] = [weights] + ([(n,)] if p.bias_term else [])
    return [tuple(shape[:axis]) + (n,)], params


def _concat(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.concat_param
    ref = bottoms[0]
    axis = p.concat_dim if p.has("concat_dim") else p.axis
    axis = canonical_axis(axis, len(ref))
    total = 0
    for s in bottoms:
        if len(s) != len(ref) or any(a != b for i, (a, b) in enumerate(zip(s, ref)) if i != axis):
            raise ShapeError(f"bottoms must match except on axis {axis}")
        total += s[axis]
    return [ref[:axis] + (total,) + ref[axis + 1 :]], []


def _slice(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.slice_param
    shape = bottoms[0]
    axis = canonical_axis(p.slice_dim if p.has("slice_dim") else p.axis, len(shape))
    dim = shape[axis]
    ntops = len(layer.tops)
    points = list(p.slice_point)
    if points:
        if len(points) != ntops - 1:
            raise ShapeError(f"{len(points)} slice_point(s) for {ntops} tops (need {ntops - 1})")
        edges = [0] + points + [dim]
        sizes = [b - a for a, b in zip(edges, edges[1:])]
        if any(s <= 0 for s in sizes):
            raise ShapeError(f"slice_point {points} must increase strictly inside (0, {dim})")
    else:
        if dim % ntops:
            raise ShapeError(f"axis {axis} of size {dim} cannot be split evenly into {ntops} tops")
        sizes = [dim // ntops] * ntops
    return [shape[:axis] + (s,) + shape[axis + 1 :] for s in sizes], []


def _eltwise(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.eltwise_param
    if any(s != bottoms[0] for s in bottoms):
        raise ShapeError("all bottoms of an Eltwise layer must have the same shape")
    if p.has("coeff") and len(p.coeff) != len(bottoms):
        raise ShapeError(f"{len(p.coeff)} coeff values for {len(bottoms)} bottoms")
    if p.has("coeff") and p.operation != "SUM":
        raise ShapeError("coeff works only with operation SUM")
    return [bottoms[0]], []


def _channels(shape: Shape) -> int:
    return shape[1] if len(shape) > 1 else 1


def _batch_norm(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    c = _channels(bottoms[0])
    return [bottoms[0]], [(c,), (c,), (1,)]


def _param_span(shape: Shape, axis: int, num_axes: int) -> Shape:
    axis = canonical_axis(axis, len(shape)) if shape else 0
    if num_axes < -1:
        raise ShapeError("num_axes must be -1 or more")
    end = len(shape) if num_axes == -1 else axis + num_axes
    if end > len(shape):
        raise ShapeError(f"axis {axis} + num_axes {num_axes} goes past the {len(shape)}-D input")
    return tuple(shape[axis:end])


def _scale_or_bias(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    is_scale = layer.type == "Scale"
    p = layer.param.scale_param if is_scale else layer.param.bias_param
    shape = bottoms[0]
    if len(bottoms) > 1:
        other = bottoms[1]
        axis = canonical_axis(p.axis, len(shape)) if other else 0
        if tuple(shape[axis : axis + len(other)]) != other:
            raise ShapeError(f"second bottom {other} must match the first bottom's axes from {axis}")
        params = [other] if is_scale and p.bias_term else []
        return [shape], params
    span = _param_span(shape, p.axis, p.num_axes)
    params = [span] + ([span] if is_scale and p.bias_term else [])
    return [shape], params


def _prelu(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    if len(bottoms[0]) < 2:
        raise ShapeError("PReLU needs an input with a channel axis")
    shared = layer.param.prelu_param.channel_shared
    return [bottoms[0]], [() if shared else (bottoms[0][1],)]


def _flatten(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.flatten_param
    shape = bottoms[0]
    start, end = canonical_axis(p.axis, len(shape)), canonical_axis(p.end_axis, len(shape))
    if end < start:
        raise ShapeError(f"end_axis {p.end_axis} comes before axis {p.axis}")
    inner = int(np.prod(shape[start : end + 1], dtype=np.int64))
    return [shape[:start] + (inner,) + shape[end + 1 :]], []


def _reshape(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.reshape_param
    shape = bottoms[0]
    ndim = len(shape)
    start = p.axis if p.axis >= 0 else ndim + p.axis + 1
    if not 0 <= start <= ndim:
        raise ShapeError(f"axis {p.axis} is out of range")
    if p.num_axes < -1:
        raise ShapeError("num_axes must be -1 or more")
    end = ndim if p.num_axes == -1 else start + p.num_axes
    if end > ndim:
        raise ShapeError(f"axis {p.axis} + num_axes {p.num_axes} goes past the {ndim}-D input")
    dims = [int(d) for d in p.shape.dim]
    if dims.count(-1) > 1:
        raise ShapeError("at most one dim may be -1")
    new = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= ndim:
                raise ShapeError(f"dim {i} is 0 (copy) but the input has no axis {start + i}")
            new.append(shape[start + i])
        elif d < -1:
            raise ShapeError(f"dim {d} is invalid (use -1 to infer, 0 to copy)")
        else:
            new.append(d)
    top = list(shape[:start]) + new + list(shape[end:])
    count = int(np.prod(shape, dtype=np.int64))
    if -1 in top:
        i = top.index(-1)
        known = int(np.prod([d for j, d in enumerate(top) if j != i], dtype=np.int64))
        if known == 0 or count % known:
            raise ShapeError(f"cannot infer the -1 dim: {count} values do not divide into {top}")
        top[i] = count // known
    if int(np.prod(top, dtype=np.int64)) != count:
        raise ShapeError(f"new shape {tuple(top)} does not hold the input's {count} values")
    return [tuple(top)], []


def _crop(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.crop_param
    if len(bottoms) != 2:
        raise ShapeError("Crop takes two bottoms: the blob to crop and one of the target size")
    shape, ref = bottoms
    if len(shape) != len(ref):
        raise ShapeError("both bottoms must have the same number of axes")
    start = canonical_axis(p.axis, len(shape))
    offsets = list(p.offset)
    if len(offsets) > 1 and len(offsets) != len(shape) - start:
        raise ShapeError(f"{len(offsets)} offsets for {len(shape) - start} cropped axes")
    top = list(shape)
    for i in range(start, len(shape)):
        off = 0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - start]
        if shape[i] - off < ref[i]:
            raise ShapeError(f"axis {i}: offset {off} + size {ref[i]} exceeds {shape[i]}")
        top[i] = ref[i]
    return [tuple(top)], []


def _argmax(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.argmax_param
    shape = bottoms[0]
    if p.top_k < 1:
        raise ShapeError("top_k must be at least 1")
    if p.has("axis"):
        axis = canonical_axis(p.axis, len(shape))
        if p.top_k > shape[axis]:
            raise ShapeError(f"top_k {p.top_k} exceeds the size {shape[axis]} of axis {axis}")
        top = list(shape)
        top[axis] = p.top_k
        return [tuple(top)], []
    if p.top_k > int(np.prod(shape[1:], dtype=np.int64)):
        raise ShapeError(f"top_k {p.top_k} exceeds the number of values per image")
    top = [1] * max(3, len(shape))
    top[0] = shape[0]
    top[2] = p.top_k
    if p.out_max_val:
        top[1] = 2
    return [tuple(top)], []


def _softmax(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    canonical_axis(layer.param.softmax_param.axis, len(bottoms[0]))
    return [bottoms[0]], []


def _lrn(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.lrn_param
    if p.local_size % 2 == 0:
        raise ShapeError("LRN local_size must be odd")
    if len(bottoms[0]) != 4:
        raise ShapeError("LRN needs a 4-D (N, C, H, W) input")
    return [bottoms[0]], []


def _split(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [bottoms[0]] * len(layer.tops), []


def _keeps_batch(axis: int, what: str) -> None:
    """Refuse a layer that would mix (or multiply) the images of a batch: savedeep saves one row per image."""
    if axis == 0:
        raise ShapeError(
            f"{what} axis 0, the batch axis, mixes the images of a batch, and savedeep saves one row "
            "per image; use axis 1 or later"
        )


def _reduction(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    shape = bottoms[0]
    axis = canonical_axis(layer.param.reduction_param.axis, len(shape))
    _keeps_batch(axis, "Reduction over the axes from")
    return [shape[:axis]], []


def _tile(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.tile_param
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    _keeps_batch(axis, "Tile along")
    if not p.has("tiles") or p.tiles <= 0:
        raise ShapeError("tile_param.tiles must be given and positive")
    return [shape[:axis] + (shape[axis] * p.tiles,) + shape[axis + 1 :]], []


def spp_levels(height: int, width: int, pyramid_height: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Kernel, stride and pad (h, w) of each level of Caffe's SPP layer: level l has 2^l bins per side.

    The kernel is the size over the bins rounded up, the stride equals the kernel, and the pad is half
    of what the bins overhang the input (rounded up), as Caffe's SPPLayer sets its pooling layers.
    """
    levels = []
    for level in range(pyramid_height):
        bins = 2**level
        kernel = [-(-height // bins), -(-width // bins)]
        pad = [(kernel[0] * bins - height + 1) // 2, (kernel[1] * bins - width + 1) // 2]
        if any(pd >= k for pd, k in zip(pad, kernel)):
            raise ShapeError(
                f"pyramid level {level} ({bins}x{bins} bins) needs pad {pad} for kernel {kernel}, which "
                f"Caffe's pooling refuses: the {height}x{width} input is too small for "
                f"pyramid_height {pyramid_height}"
            )
        levels.append((kernel, list(kernel), pad))
    return levels


def _spp(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.spp_param
    shape = bottoms[0]
    if len(shape) != 4:
        raise ShapeError("SPP needs a 4-D (N, C, H, W) input")
    if p.pyramid_height < 1:
        raise ShapeError("spp_param.pyramid_height must be at least 1")
    n, c, h, w = shape
    sizes = [
        (pooled_size(h, k[0], s[0], pd[0]), pooled_size(w, k[1], s[1], pd[1]))
        for k, s, pd in spp_levels(h, w, p.pyramid_height)
    ]
    if p.pyramid_height == 1:  # Caffe runs the one pooling layer alone, without the flatten
        return [(n, c) + sizes[0]], []
    return [(n, sum(c * oh * ow for oh, ow in sizes))], []


def _embed(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.embed_param
    if p.num_output <= 0 or p.input_dim <= 0:
        raise ShapeError("embed_param.num_output and input_dim must be positive")
    params: list[Shape] = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
    return [bottoms[0] + (p.num_output,)], params


def _im2col(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.convolution_param
    shape = bottoms[0]
    axis = canonical_axis(p.axis, len(shape))
    n_spatial = len(shape) - axis - 1
    if n_spatial < 1:
        raise ShapeError("Im2col needs at least one spatial axis after the channel axis")
    kernel, stride, pad, dilation = conv_geometry(p, n_spatial)
    out = [
        (shape[axis + 1 + i] + 2 * pad[i] - (dilation[i] * (kernel[i] - 1) + 1)) // stride[i] + 1
        for i in range(n_spatial)
    ]
    return [tuple(shape[:axis]) + (shape[axis] * int(np.prod(kernel)),) + tuple(out)], []


def legacy_shape(shape: Shape) -> Shape:
    """Caffe's (num, channels, height, width) of a blob of at most 4 axes, a missing axis counting as 1."""
    if len(shape) > 4:
        raise ShapeError(f"this layer takes blobs of at most 4 axes (num, channels, height, width), got {len(shape)}")
    return tuple(shape) + (1,) * (4 - len(shape))


def _mvn(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [legacy_shape(bottoms[0])], []  # Caffe reshapes the top to (num, channels, height, width)


def _clip(layer: Layer, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.param.clip_param
    if not (p.has("min") and p.has("max")):
        raise ShapeError("clip_param needs both min and max (Caffe requires them)")
    return [bottoms[0]], []


_Rule = Callable[[Layer, list[Shape]], tuple[list[Shape], list[Shape]]]

SHAPE_RULES: dict[str, _Rule] = {
    "Convolution": _convolution,
    "Deconvolution": _convolution,
    "Pooling": _pooling,
    "LRN": _lrn,
    "InnerProduct": _inner_product,
    "ReLU": _same,
    "PReLU": _prelu,
    "ELU": _same,
    "Sigmoid": _same,
    "TanH": _same,
    "AbsVal": _same,
    "Power": _same,
    "Exp": _same,
    "Log": _same,
    "BNLL": _same,
    "Dropout": _same,
    "Softmax": _softmax,
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "Eltwise": _eltwise,
    "BatchNorm": _batch_norm,
    "Scale": _scale_or_bias,
    "Bias": _scale_or_bias,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Crop": _crop,
    "ArgMax": _argmax,
    "MVN": _mvn,
    "Reduction": _reduction,
    "Tile": _tile,
    "SPP": _spp,
    "Threshold": _same,
    "Embed": _embed,
    "Im2col": _im2col,
    "Clip": _clip,
    "Swish": _same,
}


def supported_layer_types() -> list[str]:
    """The layer types savedeep can model, sorted."""
    return sorted(set(SHAPE_RULES) | {"Input"})
