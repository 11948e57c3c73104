"""The layer modules of a converted model (``savedeep convert --to torch -o NAME.py``).

This file's source is copied, as it is, into every generated ``NAME.py``, so it must
import nothing but the standard library and torch: the converted module runs where
savedeep is not installed. Its arithmetic is the torch engine's
(:mod:`savedeep.engines.torch_layers`), operation for operation, so that the converted
module gives the engine's numbers; tests/test_engines_convert.py compares the two blob by blob.

Two things differ from the engine's modules:

- A layer's weights are ``nn.Parameter``s (its statistics buffers), named as the
  engine names them, so the module trains and moves like any torchvision model.
- Everything that computes on shapes (Caffe's pooling sizes, axes, crops) sits in
  module-level functions registered with :func:`torch.fx.wrap`: torch.fx, and so
  torchvision's ``create_feature_extractor``, records them as single calls instead of
  tracing Python arithmetic on symbolic shapes, which it cannot do.

Size: copied whole into every converted ``NAME.py``, so it must stay one self-contained module: one
small class per Caffe layer type and the shape functions they share.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn


def _canonical_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a {ndim}-D blob")
    return axis % ndim


def _broadcast(param: Tensor, axis: int, ndim: int) -> Tensor:
    return param.reshape((1,) * axis + tuple(param.shape) + (1,) * (ndim - axis - param.dim()))


def _pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    # Caffe's rule: ceil (or floor) division, and a last window that would start in the padding is dropped.
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_pool(
    x: Tensor,
    method: str,
    kernel: Tuple[int, int],
    stride: Tuple[int, int],
    pad: Tuple[int, int],
    ceil: bool,
    global_pooling: bool,
) -> Tensor:
    """Caffe's MAX / AVE pooling: Caffe's output size, -inf (MAX) or clipped-window (AVE) borders."""
    h, w = x.shape[2], x.shape[3]
    if global_pooling:
        kernel, stride, pad = (h, w), (1, 1), (0, 0)
    out_h = _pooled_size(h, kernel[0], stride[0], pad[0], ceil)
    out_w = _pooled_size(w, kernel[1], stride[1], pad[1], ceil)
    if method == "STOCHASTIC":  # Caffe's test-time rule: sum(x^2) / sum(x) per window, 0 where sum(x) <= 0
        extra_h = max(0, (out_h - 1) * stride[0] + kernel[0] - h)
        extra_w = max(0, (out_w - 1) * stride[1] + kernel[1] - w)
        both = torch.cat([x, x.square()], dim=1)
        both = F.pad(both, (0, extra_w, 0, extra_h)) if extra_h or extra_w else both
        sums = F.avg_pool2d(both, kernel, stride, divisor_override=1)[:, :, :out_h, :out_w]
        total, squares = sums[:, : x.shape[1]], sums[:, x.shape[1] :]
        positive = total > 0
        return torch.where(
            positive, squares / torch.where(positive, total, torch.ones_like(total)), torch.zeros_like(total)
        )
    extra_h = max(0, (out_h - 1) * stride[0] + kernel[0] - h - pad[0])
    extra_w = max(0, (out_w - 1) * stride[1] + kernel[1] - w - pad[1])
    padding = (pad[1], extra_w, pad[0], extra_h)
    if method == "MAX":
        xp = F.pad(x, padding, value=-math.inf) if any(padding) else x
        return F.max_pool2d(xp, kernel, stride)[:, :, :out_h, :out_w]
    xp = F.pad(x, padding) if any(padding) else x
    y = F.avg_pool2d(xp, kernel, stride, divisor_override=1)[:, :, :out_h, :out_w]

    def divisor(out: int, size: int, k: int, st: int, pd: int) -> Tensor:
        start = torch.arange(out, dtype=torch.float32, device=x.device) * st - pd
        return (torch.clamp(start + k, max=size + pd) - start).to(x.dtype)

    return y / (
        divisor(out_h, h, kernel[0], stride[0], pad[0])[:, None]
        * divisor(out_w, w, kernel[1], stride[1], pad[1])[None, :]
    )


def caffe_lrn(x: Tensor, size: int, alpha: float, beta: float, k: float, across: bool) -> Tensor:
    """Caffe's LRN: ACROSS_CHANNELS (alpha / size, shifted sums of squares) or WITHIN_CHANNEL."""
    half = (size - 1) // 2
    sq = x.square()
    if across:
        c = x.shape[1]
        padded = F.pad(sq, (0, 0, 0, 0, half, half))
        acc = padded[:, 0:c].clone()
        for j in range(1, size):
            acc += padded[:, j : j + c]
        scale = acc.mul_(alpha / size).add_(k)
    else:
        mean = F.avg_pool2d(F.pad(sq, (half, half, half, half)), size, stride=1)
        scale = 1.0 + alpha * mean
    if beta == 0.75:
        r = scale.rsqrt()
        return x * r.mul_(r.sqrt())
    return x * scale.pow(-beta)


def caffe_inner_product(x: Tensor, weight: Tensor, bias: Optional[Tensor], axis: int) -> Tensor:
    a = _canonical_axis(axis, x.dim())
    return F.linear(x.reshape(*x.shape[:a], -1), weight, bias)


def caffe_prelu(x: Tensor, slope: Tensor) -> Tensor:
    a = _broadcast(slope, 1, x.dim()) if slope.numel() > 1 else slope
    return torch.where(x > 0, x, x * a)


def caffe_batch_norm(x: Tensor, mean: Optional[Tensor], var: Optional[Tensor], eps: float) -> Tensor:
    if mean is not None and var is not None:
        m, v = _broadcast(mean, 1, x.dim()), _broadcast(var, 1, x.dim())
    else:
        dims = [0] + list(range(2, x.dim()))
        m = x.mean(dim=dims, keepdim=True)
        v = (x - m).square().mean(dim=dims, keepdim=True)
    return (x - m) / torch.sqrt(v + eps)


def _param_axes(x: Tensor, param: Tensor, axis: int, num_axes: int, from_bottom: bool) -> Tensor:
    if from_bottom:
        if param.dim() == 0:
            return param
        a = _canonical_axis(axis, x.dim())
        shape = tuple(param.shape)
    else:
        if num_axes == 0:
            return param.reshape(())
        a = _canonical_axis(axis, x.dim())
        end = x.dim() if num_axes == -1 else a + num_axes
        shape = tuple(x.shape[a:end])
    if tuple(x.shape[a : a + len(shape)]) != shape or param.numel() != math.prod(shape):
        raise ValueError(
            f"parameter of shape {tuple(param.shape)} does not fit blob shape {tuple(x.shape)} at axis {a}"
        )
    return _broadcast(param.reshape(shape), a, x.dim())


def caffe_scale(
    x: Tensor, factor: Tensor, bias: Optional[Tensor], axis: int, num_axes: int, two_bottoms: bool
) -> Tensor:
    if two_bottoms:
        y = x * _param_axes(x, factor, axis, num_axes, True)
        if bias is not None:
            a = 0 if factor.dim() == 0 else _canonical_axis(axis, x.dim())
            y = y + _broadcast(bias.reshape(factor.shape), a, x.dim())
        return y
    y = x * _param_axes(x, factor, axis, num_axes, False)
    if bias is not None:
        y = y + _param_axes(x, bias, axis, num_axes, False)
    return y


def caffe_bias(x: Tensor, bias: Tensor, axis: int, num_axes: int, two_bottoms: bool) -> Tensor:
    return x + _param_axes(x, bias, axis, num_axes, two_bottoms)


def caffe_softmax(x: Tensor, axis: int) -> Tensor:
    return torch.softmax(x, dim=_canonical_axis(axis, x.dim()))


def caffe_concat(bottoms: List[Tensor], axis: int) -> Tensor:
    return torch.cat(bottoms, dim=_canonical_axis(axis, bottoms[0].dim()))


def caffe_slice(x: Tensor, axis: int, points: List[int], ntops: int) -> List[Tensor]:
    a = _canonical_axis(axis, x.dim())
    size = x.shape[a]
    if points:
        bounds = [0, *points, size]
    else:
        if size % ntops:
            raise ValueError(f"axis of size {size} does not split into {ntops} equal parts")
        step = size // ntops
        bounds = [i * step for i in range(ntops + 1)]
    return [x.narrow(a, lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]


def caffe_flatten(x: Tensor, start: int, end: int) -> Tensor:
    a, b = _canonical_axis(start, x.dim()), _canonical_axis(end, x.dim())
    return x.reshape(*x.shape[:a], -1, *x.shape[b + 1 :])


def caffe_reshape(x: Tensor, dims: List[int], axis: int, num_axes: int) -> Tensor:
    nd = x.dim()
    start = axis + nd + 1 if axis < 0 else axis
    end = nd if num_axes == -1 else start + num_axes
    if not 0 <= start <= end <= nd:
        raise ValueError(f"axis/num_axes do not fit a {nd}-D blob")
    middle = [x.shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(*x.shape[:start], *middle, *x.shape[end:])


def caffe_crop(x: Tensor, ref: Tensor, axis: int, offsets: List[int]) -> Tensor:
    a = _canonical_axis(axis, x.dim())
    for i in range(x.dim() - a):
        d = a + i
        off = 0 if not offsets else offsets[0 if len(offsets) == 1 else i]
        x = x.narrow(d, off, ref.shape[d])
    return x


def caffe_argmax(x: Tensor, top_k: int, out_max_val: bool, axis: Optional[int]) -> Tensor:
    if axis is not None:
        values, indices = torch.topk(x, top_k, dim=_canonical_axis(axis, x.dim()))
        return values if out_max_val else indices.to(x.dtype)
    values, indices = torch.topk(x.reshape(x.shape[0], -1), top_k, dim=1)
    parts = [indices.to(x.dtype)] + ([values] if out_max_val else [])
    y = torch.stack(parts, dim=1)
    return y.reshape(x.shape[0], len(parts), top_k, *([1] * (x.dim() - 3)))


def caffe_spp(x: Tensor, method: str, pyramid_height: int) -> Tensor:
    """Caffe's SPP: level l pools into 2^l x 2^l bins (kernel = stride = the bin size rounded up, pad half the
    overhang rounded up); the levels flattened and concatenated (a single level is returned as it is)."""
    h, w = x.shape[2], x.shape[3]
    pooled = []
    for level in range(pyramid_height):
        bins = 2**level
        kernel = (-(-h // bins), -(-w // bins))
        pad = ((kernel[0] * bins - h + 1) // 2, (kernel[1] * bins - w + 1) // 2)
        pooled.append(caffe_pool(x, method, kernel, kernel, pad, True, False))
    if pyramid_height == 1:
        return pooled[0]
    return torch.cat([y.reshape(y.shape[0], -1) for y in pooled], dim=1)


def caffe_mvn(x: Tensor, normalize_variance: bool, across_channels: bool, eps: float) -> Tensor:
    """Caffe's MVN on the (num, channels, height, width) view (a missing axis counts as 1); divides by the
    standard deviation plus eps."""
    shape = tuple(x.shape) + (1,) * (4 - x.dim())
    flat = x.reshape(shape[0] if across_channels else shape[0] * shape[1], -1)
    y = flat - flat.mean(dim=1, keepdim=True)
    if normalize_variance:
        y = y / (y.square().mean(dim=1, keepdim=True).sqrt() + eps)
    return y.reshape(shape)


def caffe_reduction(x: Tensor, operation: str, axis: int, coeff: float) -> Tensor:
    a = _canonical_axis(axis, x.dim())
    flat = x.reshape(*x.shape[:a], -1)
    if operation == "ASUM":
        flat = flat.abs()
    elif operation == "SUMSQ":
        flat = flat.square()
    y = flat.mean(dim=-1) if operation == "MEAN" else flat.sum(dim=-1)
    return y * coeff if coeff != 1 else y


def caffe_tile(x: Tensor, axis: int, tiles: int) -> Tensor:
    reps = [1] * x.dim()
    reps[_canonical_axis(axis, x.dim())] = tiles
    return x.repeat(*reps)


def caffe_embed(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Each value of the bottom, an integer index (truncated toward zero, as Caffe's cast), becomes a row."""
    index = x.to(torch.int64)
    if bool(((index < 0) | (index >= weight.shape[0])).any()):
        raise ValueError(f"Embed: the bottom holds values outside [0, {weight.shape[0]}), which are not indices")
    y = weight[index]
    return y + bias if bias is not None else y


def caffe_im2col(
    x: Tensor, kernel: Tuple[int, int], stride: Tuple[int, int], pad: Tuple[int, int], dilation: Tuple[int, int]
) -> Tensor:
    cols = F.unfold(x, kernel, dilation, pad, stride)
    out = [(x.shape[2 + i] + 2 * pad[i] - (dilation[i] * (kernel[i] - 1) + 1)) // stride[i] + 1 for i in range(2)]
    return cols.reshape(x.shape[0], cols.shape[1], *out)


for _fn in (
    "caffe_pool",
    "caffe_spp",
    "caffe_mvn",
    "caffe_reduction",
    "caffe_tile",
    "caffe_embed",
    "caffe_im2col",
    "caffe_lrn",
    "caffe_inner_product",
    "caffe_prelu",
    "caffe_batch_norm",
    "caffe_scale",
    "caffe_bias",
    "caffe_softmax",
    "caffe_concat",
    "caffe_slice",
    "caffe_flatten",
    "caffe_reshape",
    "caffe_crop",
    "caffe_argmax",
):
    torch.fx.wrap(_fn)


class CaffeLayer(nn.Module):
    """One Caffe layer: its parameters (and buffers) by the engine's names, then the in-place layers
    that follow it on its top, as child modules named after them.

    ``forward`` returns the layer's top after those in-place layers ran, so a forward hook on this
    module sees the blob as pycaffe's ``net.blobs`` holds it (e.g. post-ReLU).
    """

    caffe_type = ""

    def __init__(self, params: Optional[dict] = None, buffers: Optional[dict] = None, **config: object) -> None:
        super().__init__()
        for name, shape in (params or {}).items():
            self.register_parameter(name, None if shape is None else nn.Parameter(torch.empty(shape)))
        for name, shape in (buffers or {}).items():
            self.register_buffer(name, None if shape is None else torch.empty(shape))
        self.config = dict(config)
        self.after: List[str] = []  # names of the in-place layers run on the top, in net order

    def follow(self, name: str, layer: "CaffeLayer") -> "CaffeLayer":
        self.add_module(name, layer)
        self.after.append(name)
        return self

    def compute(self, *bottoms: Tensor) -> Tensor:  # pragma: no cover - every layer type overrides it
        raise NotImplementedError

    def forward(self, *bottoms: Tensor):
        y = self.compute(*bottoms)
        for name in self.after:
            y = getattr(self, name)(y)
        return y

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


class Convolution(CaffeLayer):
    caffe_type = "Convolution"

    def compute(self, *bottoms: Tensor):
        c = self.config
        outs = [F.conv2d(x, self.weight, self.bias, c["stride"], c["pad"], c["dilation"], c["group"]) for x in bottoms]
        return outs[0] if len(outs) == 1 else tuple(outs)


class Deconvolution(CaffeLayer):
    caffe_type = "Deconvolution"

    def compute(self, *bottoms: Tensor):
        c = self.config
        outs = [
            F.conv_transpose2d(x, self.weight, self.bias, c["stride"], c["pad"], 0, c["group"], c["dilation"])
            for x in bottoms
        ]
        return outs[0] if len(outs) == 1 else tuple(outs)


class InnerProduct(CaffeLayer):
    caffe_type = "InnerProduct"

    def compute(self, x: Tensor) -> Tensor:
        return caffe_inner_product(x, self.weight, self.bias, self.config["axis"])


class Pooling(CaffeLayer):
    caffe_type = "Pooling"

    def compute(self, x: Tensor) -> Tensor:
        c = self.config
        return caffe_pool(x, c["method"], c["kernel"], c["stride"], c["pad"], c["ceil"], c["global_pooling"])


class LRN(CaffeLayer):
    caffe_type = "LRN"

    def compute(self, x: Tensor) -> Tensor:
        c = self.config
        return caffe_lrn(x, c["size"], c["alpha"], c["beta"], c["k"], c["across"])


class ReLU(CaffeLayer):
    """``inplace``: set by the converter where the bottom is a fresh tensor that nothing else holds
    (a convolution's or pooling's output, say), as torchvision's ``ReLU(inplace=True)``."""

    caffe_type = "ReLU"

    def compute(self, x: Tensor) -> Tensor:
        slope, inplace = self.config["negative_slope"], self.config.get("inplace", False)
        if slope == 0:
            return torch.relu_(x) if inplace else torch.relu(x)
        return F.leaky_relu_(x, slope) if inplace else torch.where(x > 0, x, x * slope)


class PReLU(CaffeLayer):
    caffe_type = "PReLU"

    def compute(self, x: Tensor) -> Tensor:
        return caffe_prelu(x, self.slope)


class ELU(CaffeLayer):
    caffe_type = "ELU"

    def compute(self, x: Tensor) -> Tensor:
        alpha = self.config["alpha"]
        return torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0)))


class Sigmoid(CaffeLayer):
    caffe_type = "Sigmoid"

    def compute(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)


class TanH(CaffeLayer):
    caffe_type = "TanH"

    def compute(self, x: Tensor) -> Tensor:
        return torch.tanh(x)


class AbsVal(CaffeLayer):
    caffe_type = "AbsVal"

    def compute(self, x: Tensor) -> Tensor:
        return torch.abs(x)


class Power(CaffeLayer):
    caffe_type = "Power"

    def compute(self, x: Tensor) -> Tensor:
        power, scale, shift = self.config["power"], self.config["scale"], self.config["shift"]
        if power == 0 or scale == 0:
            return torch.full_like(x, 1.0 if power == 0 else shift**power)
        y = x * scale + shift if (scale != 1 or shift != 0) else x
        return y if power == 1 else y.pow(power)


class Exp(CaffeLayer):
    caffe_type = "Exp"

    def compute(self, x: Tensor) -> Tensor:
        return self.config["outer"] * torch.exp(self.config["inner"] * x)


class Log(CaffeLayer):
    caffe_type = "Log"

    def compute(self, x: Tensor) -> Tensor:
        c = self.config
        return torch.log(x * c["scale"] + c["shift"]) * c["base_scale"]


class BNLL(CaffeLayer):
    caffe_type = "BNLL"

    def compute(self, x: Tensor) -> Tensor:
        return torch.clamp(x, min=0) + torch.log1p(torch.exp(-x.abs()))


class Threshold(CaffeLayer):
    caffe_type = "Threshold"

    def compute(self, x: Tensor) -> Tensor:
        return (x > self.config["threshold"]).to(x.dtype)


class Clip(CaffeLayer):
    """Caffe's max(min, min(x, max)): min wins where min > max."""

    caffe_type = "Clip"

    def compute(self, x: Tensor) -> Tensor:
        return x.clamp(max=self.config["max"]).clamp(min=self.config["min"])


class Swish(CaffeLayer):
    caffe_type = "Swish"

    def compute(self, x: Tensor) -> Tensor:
        beta = self.config["beta"]
        return x * torch.sigmoid(x * beta) if beta != 1 else x * torch.sigmoid(x)


class SPP(CaffeLayer):
    caffe_type = "SPP"

    def compute(self, x: Tensor) -> Tensor:
        return caffe_spp(x, self.config["method"], self.config["pyramid_height"])


class MVN(CaffeLayer):
    caffe_type = "MVN"

    def compute(self, x: Tensor) -> Tensor:
        c = self.config
        return caffe_mvn(x, c["normalize_variance"], c["across_channels"], c["eps"])


class Reduction(CaffeLayer):
    caffe_type = "Reduction"

    def compute(self, x: Tensor) -> Tensor:
        c = self.config
        return caffe_reduction(x, c["operation"], c["axis"], c["coeff"])


class Tile(CaffeLayer):
    caffe_type = "Tile"

    def compute(self, x: Tensor) -> Tensor:
        return caffe_tile(x, self.config["axis"], self.config["tiles"])


class Embed(CaffeLayer):
    caffe_type = "Embed"

    def compute(self, x: Tensor) -> Tensor:
        return caffe_embed(x, self.weight, self.bias)


class Im2col(CaffeLayer):
    caffe_type = "Im2col"

    def compute(self, x: Tensor) -> Tensor:
        c = self.config
        return caffe_im2col(x, c["kernel"], c["stride"], c["pad"], c["dilation"])


class Dropout(CaffeLayer):
    """Identity in eval mode (Caffe's TEST phase); in train mode torch's dropout, which scales by
    1 / (1 - ratio) as Caffe's TRAIN phase does."""

    caffe_type = "Dropout"

    def compute(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.config["ratio"], self.training) if self.training else x


class Split(CaffeLayer):
    caffe_type = "Split"

    def compute(self, x: Tensor):
        return tuple([x] * self.config["ntops"])


class Silence(CaffeLayer):
    caffe_type = "Silence"

    def compute(self, *bottoms: Tensor):
        return ()


class Softmax(CaffeLayer):
    caffe_type = "Softmax"

    def compute(self, x: Tensor) -> Tensor:
        return caffe_softmax(x, self.config["axis"])


class Concat(CaffeLayer):
    caffe_type = "Concat"

    def compute(self, *bottoms: Tensor) -> Tensor:
        return bottoms[0] if len(bottoms) == 1 else caffe_concat(list(bottoms), self.config["axis"])


class Slice(CaffeLayer):
    caffe_type = "Slice"

    def compute(self, x: Tensor):
        n = self.config["ntops"]
        parts = caffe_slice(x, self.config["axis"], self.config["points"], n)
        # indexed by the known count: under torch.fx the list is one symbolic value, whose length is unknown
        return parts[0] if n == 1 else tuple(parts[i] for i in range(n))


class Eltwise(CaffeLayer):
    caffe_type = "Eltwise"

    def compute(self, *bottoms: Tensor) -> Tensor:
        op, coeff = self.config["operation"], self.config["coeff"]
        if op == "SUM":
            coeff = coeff or [1.0] * len(bottoms)
            y = bottoms[0] * coeff[0] if coeff[0] != 1 else bottoms[0]
            for b, k in zip(bottoms[1:], coeff[1:]):
                y = y + (b * k if k != 1 else b)
            return y
        y = bottoms[0]
        for b in bottoms[1:]:
            y = y * b if op == "PROD" else torch.maximum(y, b)
        return y


class BatchNorm(CaffeLayer):
    caffe_type = "BatchNorm"

    def compute(self, x: Tensor) -> Tensor:
        return caffe_batch_norm(x, self.mean, self.var, self.config["eps"])


class Scale(CaffeLayer):
    caffe_type = "Scale"

    def compute(self, *bottoms: Tensor) -> Tensor:
        c = self.config
        factor = bottoms[1] if c["two_bottoms"] else self.factor
        return caffe_scale(bottoms[0], factor, self.bias, c["axis"], c["num_axes"], c["two_bottoms"])


class Bias(CaffeLayer):
    caffe_type = "Bias"

    def compute(self, *bottoms: Tensor) -> Tensor:
        c = self.config
        bias = bottoms[1] if c["two_bottoms"] else self.bias
        return caffe_bias(bottoms[0], bias, c["axis"], c["num_axes"], c["two_bottoms"])


class Flatten(CaffeLayer):
    caffe_type = "Flatten"

    def compute(self, x: Tensor) -> Tensor:
        return caffe_flatten(x, self.config["start"], self.config["end"])


class Reshape(CaffeLayer):
    caffe_type = "Reshape"

    def compute(self, x: Tensor) -> Tensor:
        c = self.config
        return caffe_reshape(x, c["dims"], c["axis"], c["num_axes"])


class Crop(CaffeLayer):
    caffe_type = "Crop"

    def compute(self, x: Tensor, ref: Tensor) -> Tensor:
        return caffe_crop(x, ref, self.config["axis"], self.config["offsets"])


class ArgMax(CaffeLayer):
    caffe_type = "ArgMax"

    def compute(self, x: Tensor) -> Tensor:
        c = self.config
        return caffe_argmax(x, c["top_k"], c["out_max_val"], c["axis"])


def alias(x: Tensor, shape: Sequence[int]) -> Tensor:
    """A Caffe alias (a Split/Flatten/Reshape view) taking an in-place write's value in its own shape."""
    return x.reshape(shape)


def load_state(model: nn.Module, path: str, map_location: str = "cpu") -> nn.Module:
    """Load the weights file written beside the module (torch.save of the state dict) into ``model``."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except TypeError:  # torch before weights_only
        state = torch.load(path, map_location=map_location)
    model.load_state_dict(state)
    return model
