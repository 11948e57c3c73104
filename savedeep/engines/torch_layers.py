"""Caffe layer types as torch modules that reproduce Caffe's arithmetic exactly.

Each builder turns one :class:`savedeep.caffe.model.Layer` (its ``param`` Message and
its weight ``blobs``) into a module whose ``forward(*bottoms)`` returns the list
of top tensors. Modules never modify their inputs in place: the engine shares
one tensor between several blob names (Split, Dropout, in-place layers), so an
in-place write would change a blob that a later layer still reads.

Where Caffe's rules differ from torch's defaults the code follows Caffe:
pooling output sizes round up and drop a last window that would start in the
padding; average pooling divides by the window clipped to the padded input;
stochastic pooling at test time is sum(x^2) / sum(x) over windows that ignore
the padding; MVN divides by the standard deviation plus eps; Clip lets min win
over max;
LRN across channels divides ``alpha`` by ``local_size``; LRN within a channel is
``(1 + alpha * mean of squares)^-beta`` with zero padding (``k`` unused).

Size: one small module per Caffe layer type (27 classes, plus builder functions) and the helpers
they share, found by type in one table (``BUILDERS``); split by layer family, Caffe's arithmetic that
the tests compare as one set would be scattered.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from savedeep.errors import ModelError, UnsupportedLayerError
from savedeep.caffe.model import (
    ShapeError,
    canonical_axis,
    conv_geometry,
    legacy_shape,
    pooled_size,
    pooling_geometry,
    spp_levels,
)

if TYPE_CHECKING:  # pragma: no cover
    from savedeep.caffe.model import Layer

# Layer types that produce the net's input; the engine feeds the input blob itself.
INPUT_TYPES = frozenset({"Input"})


def shares_data(layer: "Layer") -> bool:
    """Whether Caffe makes this layer's tops views of its bottom's memory (``Blob::ShareData``).

    An in-place layer that later writes one of those blobs changes all of them in
    pycaffe, so the engine must propagate such writes to every alias.
    """
    if layer.type in ("Split", "Flatten", "Reshape"):
        return True
    if layer.type == "Concat":
        return len(layer.bottoms) == 1
    if layer.type == "Slice":
        return len(layer.tops) == 1
    return False


class CaffeOp(nn.Module):
    """Base of every layer module: remembers the layer's name and type for error messages."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__()
        self.layer_name = layer.name
        self.layer_type = layer.type

    def where(self) -> str:
        """The layer as users see it in the prototxt, for messages."""
        return f"layer {self.layer_name!r} ({self.layer_type})"

    def forward(self, *bottoms: Tensor) -> list[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------
# helpers


def _weights(layer: "Layer", count: int) -> list[Tensor]:
    """The layer's first `count` weight blobs as float32 tensors, or a ModelError if missing."""
    blobs = list(layer.blobs)
    if len(blobs) < count:
        raise ModelError(
            f"layer {layer.name!r} ({layer.type}) needs {count} weight blob(s) but the caffemodel "
            f"gives {len(blobs)}: load the model with its weights file (a .caffemodel that matches "
            f"the prototxt)"
        )
    return [torch.from_numpy(np.array(b, dtype=np.float32, copy=True)) for b in blobs[:count]]


def _geometry(layer: "Layer", rule: Callable[..., Any], *args: Any) -> Any:
    """One of savedeep/caffe/model.py's geometry rules (shape inference uses the same), as a ModelError naming the layer."""
    try:
        return rule(*args)
    except ShapeError as exc:
        raise ModelError(f"layer {layer.name!r} ({layer.type}): {exc}; fix the prototxt") from None


def _axis(axis: int, ndim: int, op: CaffeOp) -> int:
    """savedeep.caffe.model.canonical_axis, as a ModelError naming the layer."""
    try:
        return canonical_axis(axis, ndim)
    except ShapeError as exc:
        raise ModelError(f"{op.where()}: {exc}; fix the prototxt") from None


def _broadcast(param: Tensor, axis: int, ndim: int) -> Tensor:
    """View `param` (shaped like some axes of a blob starting at `axis`) so it broadcasts over the blob."""
    return param.reshape((1,) * axis + tuple(param.shape) + (1,) * (ndim - axis - param.dim()))


def _require_bottoms(layer: "Layer", allowed: Sequence[int]) -> None:
    if len(layer.bottoms) not in allowed:
        raise ModelError(
            f"layer {layer.name!r} ({layer.type}) has {len(layer.bottoms)} bottoms; Caffe allows "
            f"{' or '.join(map(str, allowed))}: fix the prototxt"
        )


# ---------------------------------------------------------------------------
# layers with weights


class Convolution(CaffeOp):
    """Caffe's 2-D Convolution (group, pad, stride, dilation, optional bias)."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.convolution_param
        if p.axis not in (1, -3):
            raise UnsupportedLayerError(
                f"layer {layer.name!r} ({layer.type}): convolution_param.axis {p.axis} is not supported "
                f"by the torch engine (only channel axis 1); use the caffe engine"
            )
        kernel, stride, pad, dilation = _geometry(layer, conv_geometry, p, 2)
        self.kernel, self.stride, self.pad, self.dilation = tuple(kernel), tuple(stride), tuple(pad), tuple(dilation)
        self.group = int(p.group)
        self.num_output = int(p.num_output)
        if self.num_output < 1:
            raise ModelError(f"{self.where()}: num_output must be positive; fix the prototxt")
        blobs = _weights(layer, 2 if p.bias_term else 1)
        self.register_buffer("weight", self._shape_weight(blobs[0]))
        self.register_buffer("bias", blobs[1].reshape(-1) if p.bias_term else None)

    def _shape_weight(self, w: Tensor) -> Tensor:
        # Caffe stores (out, in/group, kh, kw); legacy 4-D shapes have the same layout.
        return w.reshape(self.num_output, -1, *self.kernel)

    def forward(self, *bottoms: Tensor) -> list[Tensor]:
        outs = []
        for x in bottoms:  # Caffe applies the same filters to every bottom, one top each
            if x.dim() != 4:
                raise UnsupportedLayerError(
                    f"{self.where()}: the torch engine runs 2-D convolutions only, got a {x.dim()}-D blob; "
                    f"use the caffe engine"
                )
            outs.append(F.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group))
        return outs


class Deconvolution(Convolution):
    """Caffe's Deconvolution: the transpose of Convolution, weights stored (in, out/group, kh, kw)."""

    def _shape_weight(self, w: Tensor) -> Tensor:
        return w.reshape(-1, self.num_output // self.group, *self.kernel)

    def forward(self, *bottoms: Tensor) -> list[Tensor]:
        outs = []
        for x in bottoms:
            if x.dim() != 4:
                raise UnsupportedLayerError(
                    f"{self.where()}: the torch engine runs 2-D deconvolutions only, got a {x.dim()}-D blob; "
                    f"use the caffe engine"
                )
            outs.append(
                F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.pad, 0, self.group, self.dilation)
            )
        return outs


class InnerProduct(CaffeOp):
    """Caffe's InnerProduct: flattens the axes from `axis` on, then a matrix product (optionally transposed)."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.inner_product_param
        self.axis = int(p.axis)
        n = int(p.num_output)
        blobs = _weights(layer, 2 if p.bias_term else 1)
        w = blobs[0]
        # Legacy models store (1, 1, N, K); `transpose` stores (K, N).
        w = w.reshape(-1, n).t() if p.transpose else w.reshape(n, -1)
        self.register_buffer("weight", w.contiguous())
        self.register_buffer("bias", blobs[1].reshape(-1) if p.bias_term else None)

    def forward(self, x: Tensor) -> list[Tensor]:
        axis = _axis(self.axis, x.dim(), self)
        x = x.reshape(*x.shape[:axis], -1)
        return [F.linear(x, self.weight, self.bias)]


class PReLU(CaffeOp):
    """Caffe's PReLU: a learned negative slope per channel (or one shared)."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        self.register_buffer("slope", _weights(layer, 1)[0].reshape(-1))

    def forward(self, x: Tensor) -> list[Tensor]:
        a = self.slope
        if a.numel() > 1:
            a = _broadcast(a, 1, x.dim())
        return [torch.where(x > 0, x, x * a)]


class BatchNorm(CaffeOp):
    """Caffe's BatchNorm: global statistics (mean, var divided by the stored scale factor) or batch ones."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.batch_norm_param
        # Caffe's default: use the stored statistics in the TEST phase.
        self.use_global = bool(p.use_global_stats) if p.has("use_global_stats") else True
        self.eps = float(p.eps)
        if self.use_global:
            mean, var, factor = _weights(layer, 3)
            f = float(factor.reshape(-1)[0])
            scale = 0.0 if f == 0 else 1.0 / f
            self.register_buffer("mean", mean.reshape(-1) * scale)
            self.register_buffer("var", var.reshape(-1) * scale)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.use_global:
            mean, var = _broadcast(self.mean, 1, x.dim()), _broadcast(self.var, 1, x.dim())
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims, keepdim=True)
            var = (x - mean).square().mean(dim=dims, keepdim=True)
        return [(x - mean) / torch.sqrt(var + self.eps)]


class Scale(CaffeOp):
    """Caffe's Scale: multiply by a learned or second-bottom factor over axes [axis, axis+num_axes), optional bias."""

    param_field = "scale_param"

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        _require_bottoms(layer, (1, 2))
        p = getattr(layer.param, self.param_field)
        self.axis = int(p.axis)
        self.num_axes = int(p.num_axes)
        self.two_bottoms = len(layer.bottoms) == 2
        has_bias = bool(p.bias_term)
        learned = (0 if self.two_bottoms else 1) + (1 if has_bias else 0)
        blobs = _weights(layer, learned)
        self.register_buffer("factor", None if self.two_bottoms else blobs[0])
        self.register_buffer("bias", blobs[-1] if has_bias else None)

    def _param_axes(self, x: Tensor, param: Tensor, from_bottom: bool) -> tuple[int, Tensor]:
        """Where `param` sits in x and param reshaped to those axes (Caffe's shape rules)."""
        if from_bottom:
            if param.dim() == 0:
                return 0, param
            axis = _axis(self.axis, x.dim(), self)
            shape = tuple(param.shape)
        else:
            if self.num_axes == 0:
                return 0, param.reshape(())
            axis = _axis(self.axis, x.dim(), self)
            end = x.dim() if self.num_axes == -1 else axis + self.num_axes
            shape = tuple(x.shape[axis:end])
        if tuple(x.shape[axis : axis + len(shape)]) != shape or param.numel() != math.prod(shape):
            raise ModelError(
                f"{self.where()}: parameter of shape {tuple(param.shape)} does not fit blob shape "
                f"{tuple(x.shape)} at axis {axis}; fix axis/num_axes in the prototxt"
            )
        return axis, _broadcast(param.reshape(shape), axis, x.dim())

    def forward(self, *bottoms: Tensor) -> list[Tensor]:
        x = bottoms[0]
        if self.two_bottoms:
            _, factor = self._param_axes(x, bottoms[1], from_bottom=True)
            y = x * factor
            if self.bias is not None:
                axis = 0 if bottoms[1].dim() == 0 else _axis(self.axis, x.dim(), self)
                y = y + _broadcast(self.bias.reshape(bottoms[1].shape), axis, x.dim())
            return [y]
        _, factor = self._param_axes(x, self.factor, from_bottom=False)
        y = x * factor
        if self.bias is not None:
            _, bias = self._param_axes(x, self.bias, from_bottom=False)
            y = y + bias
        return [y]


class Bias(CaffeOp):
    """Caffe's Bias: add a learned or second-bottom term over axes [axis, axis+num_axes)."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        _require_bottoms(layer, (1, 2))
        p = layer.param.bias_param
        self.axis = int(p.axis)
        self.num_axes = int(p.num_axes)
        self.two_bottoms = len(layer.bottoms) == 2
        self.register_buffer("bias", None if self.two_bottoms else _weights(layer, 1)[0])

    _param_axes = Scale._param_axes

    def forward(self, *bottoms: Tensor) -> list[Tensor]:
        x = bottoms[0]
        if self.two_bottoms:
            _, b = self._param_axes(x, bottoms[1], from_bottom=True)
        else:
            _, b = self._param_axes(x, self.bias, from_bottom=False)
        return [x + b]


# ---------------------------------------------------------------------------
# pooling and normalisation


caffe_pool_size = pooled_size  # Caffe's pooled output length; one rule, in savedeep/caffe/model.py


def _pool2d(
    x: Tensor, method: str, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int], ceil: bool = True
) -> Tensor:
    """One Caffe pooling of a 4-D blob: MAX, AVE, or STOCHASTIC as Caffe computes it at test time."""
    h, w = x.shape[2], x.shape[3]
    out_h = pooled_size(h, kernel[0], stride[0], pad[0], ceil)
    out_w = pooled_size(w, kernel[1], stride[1], pad[1], ceil)
    if method == "STOCHASTIC":
        # Caffe's test-time stochastic pooling (pooling_layer.cu; the CPU build has none): each
        # window starts at o * stride, ignoring pad (which only enters the output size), is
        # clipped to the input, and gives sum(x^2) / sum(x) where sum(x) > 0, else 0.
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
    # Right/bottom padding so that every counted window lies inside the padded tensor.
    extra_h = max(0, (out_h - 1) * stride[0] + kernel[0] - h - pad[0])
    extra_w = max(0, (out_w - 1) * stride[1] + kernel[1] - w - pad[1])
    padding = (pad[1], extra_w, pad[0], extra_h)
    if method == "MAX":
        # -inf padding: Caffe's max ignores positions outside the input
        xp = F.pad(x, padding, value=-math.inf) if any(padding) else x
        y = F.max_pool2d(xp, kernel, stride)
        return y[:, :, :out_h, :out_w]
    xp = F.pad(x, padding) if any(padding) else x
    # Sum over the window (zeros outside the input), then divide by the window size
    # clipped to the padded input [-pad, size + pad), as Caffe does.
    y = F.avg_pool2d(xp, kernel, stride, divisor_override=1)[:, :, :out_h, :out_w]
    div_h = _pool_divisor(out_h, h, kernel[0], stride[0], pad[0], x)
    div_w = _pool_divisor(out_w, w, kernel[1], stride[1], pad[1], x)
    return y / (div_h[:, None] * div_w[None, :])


def _pool_divisor(out: int, size: int, kernel: int, stride: int, pad: int, like: Tensor) -> Tensor:
    """AVE pooling's divisor per output position: the window clipped to [-pad, size + pad)."""
    start = torch.arange(out, dtype=torch.float32, device=like.device) * stride - pad
    end = torch.clamp(start + kernel, max=size + pad)
    return (end - start).to(like.dtype)


class Pooling(CaffeOp):
    """Caffe's MAX, AVE and (test-time) STOCHASTIC pooling with Caffe's output size, padding and divisor rules."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.pooling_param
        self.method = p.pool
        if self.method not in ("MAX", "AVE", "STOCHASTIC"):
            raise UnsupportedLayerError(f"{self.where()}: unknown pool method {self.method}; fix the prototxt")
        if len(layer.tops) > 1:
            raise UnsupportedLayerError(
                f"layer {layer.name!r} (Pooling): a second top (the max mask) is not supported by the torch "
                f"engine; remove it from the prototxt or use the caffe engine"
            )
        self.global_pooling = bool(p.global_pooling)
        self.param = p  # for pooling_geometry (a global pooling's kernel is the input's size)
        # checked now, as shape inference checks it; for a global pooling any input size will do
        self.kernel, self.stride, self.pad = (tuple(v) for v in _geometry(layer, pooling_geometry, p, 1, 1))
        self.ceil = p.round_mode == "CEIL"

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4:
            raise UnsupportedLayerError(f"{self.where()}: the torch engine pools 4-D blobs only; use the caffe engine")
        if self.global_pooling:
            kernel, stride, pad = pooling_geometry(self.param, x.shape[2], x.shape[3])
        else:
            kernel, stride, pad = self.kernel, self.stride, self.pad
        return [_pool2d(x, self.method, kernel, stride, pad, self.ceil)]


class SPP(CaffeOp):
    """Caffe's spatial pyramid pooling: level l pools into 2^l x 2^l bins; the levels are flattened and concatenated."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.spp_param
        self.height, self.method = int(p.pyramid_height), p.pool
        if self.height < 1:
            raise ModelError(f"{self.where()}: spp_param.pyramid_height must be at least 1; fix the prototxt")

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4:
            raise ModelError(f"{self.where()}: SPP needs a 4-D (N, C, H, W) blob; fix the prototxt")
        try:
            levels = spp_levels(x.shape[2], x.shape[3], self.height)
        except ShapeError as exc:
            raise ModelError(f"{self.where()}: {exc}; fix the prototxt or the input size") from None
        pooled = [_pool2d(x, self.method, k, s, pd) for k, s, pd in levels]
        if self.height == 1:  # Caffe runs the single pooling alone, without flattening it
            return pooled
        return [torch.cat([y.reshape(y.shape[0], -1) for y in pooled], dim=1)]


class LRN(CaffeOp):
    """Caffe's local response normalisation, ACROSS_CHANNELS or WITHIN_CHANNEL."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0:
            raise ModelError(f"{self.where()}: local_size must be odd (Caffe requires it); fix the prototxt")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = p.norm_region

    def forward(self, x: Tensor) -> list[Tensor]:
        half = (self.size - 1) // 2
        sq = x.square()
        if self.region == "ACROSS_CHANNELS":
            # scale = k + alpha/size * (sum of squares over channels c-half..c+half, zero outside),
            # as `size` shifted adds of the zero-padded squares: 3-4x faster on the CPU than
            # avg_pool3d over a 5-D view, and it keeps the input's memory layout.
            c = x.shape[1]
            padded = F.pad(sq, (0, 0, 0, 0, half, half))
            acc = padded[:, 0:c].clone()
            for j in range(1, self.size):
                acc += padded[:, j : j + c]
            scale = acc.mul_(self.alpha / self.size).add_(self.k)
        else:
            # Caffe composes AVE pooling (size x size, zero padding, always /size^2) and
            # Power(shift 1, scale alpha): k plays no part here.
            mean = F.avg_pool2d(F.pad(sq, (half, half, half, half)), self.size, stride=1)
            scale = 1.0 + self.alpha * mean
        if (
            self.beta == 0.75
        ):  # every published LRN net: scale^-0.75 = rsqrt(scale) * rsqrt(scale)^0.5, cheaper than pow
            r = scale.rsqrt()
            return [x * r.mul_(r.sqrt())]
        return [x * scale.pow(-self.beta)]


class MVN(CaffeOp):
    """Caffe's mean-variance normalisation per (image, channel), or per image with across_channels.

    Caffe divides by the standard deviation plus eps (not by sqrt(variance + eps)).
    """

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.mvn_param
        self.normalize_variance, self.across = bool(p.normalize_variance), bool(p.across_channels)
        self.eps = float(p.eps)

    def forward(self, x: Tensor) -> list[Tensor]:
        try:  # the top is (num, channels, height, width), a missing axis counting as 1, as in Caffe
            shape = legacy_shape(tuple(x.shape))
        except ShapeError as exc:
            raise ModelError(f"{self.where()}: {exc}; fix the prototxt") from None
        flat = x.reshape(shape[0] if self.across else shape[0] * shape[1], -1)
        y = flat - flat.mean(dim=1, keepdim=True)
        if self.normalize_variance:
            y = y / (y.square().mean(dim=1, keepdim=True).sqrt() + self.eps)
        return [y.reshape(shape)]


# ---------------------------------------------------------------------------
# element-wise layers


class _Elementwise(CaffeOp):
    """One function applied to each element of the single bottom.

    ``fn_`` is the same function writing into its argument; the engine uses it
    (``forward_inplace``) for a layer that is in place in the prototxt when no one
    else holds the bottom's old value, saving an allocation and a pass over memory.
    """

    def __init__(
        self, layer: "Layer", fn: Callable[[Tensor], Tensor], fn_: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        super().__init__(layer)
        self.fn = fn
        self.fn_ = fn_

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.fn(x)]

    def forward_inplace(self, x: Tensor) -> list[Tensor]:
        return [self.fn_(x)] if self.fn_ is not None else self.forward(x)


def _relu(layer: "Layer") -> CaffeOp:
    slope = float(layer.param.relu_param.negative_slope)
    if slope == 0:
        return _Elementwise(layer, torch.relu, torch.relu_)
    # Caffe: x > 0 ? x : slope * x, which is also what leaky_relu_ computes
    return _Elementwise(layer, lambda x: torch.where(x > 0, x, x * slope), lambda x: F.leaky_relu_(x, slope))


def _elu(layer: "Layer") -> CaffeOp:
    alpha = float(layer.param.elu_param.alpha)
    return _Elementwise(layer, lambda x: torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0))))


def _power(layer: "Layer") -> CaffeOp:
    p = layer.param.power_param
    power, scale, shift = float(p.power), float(p.scale), float(p.shift)

    def fn(x: Tensor) -> Tensor:
        if power == 0 or scale == 0:
            # Caffe fills with 1 (power 0) or shift^power (scale 0) without reading x.
            value = 1.0 if power == 0 else shift**power
            return torch.full_like(x, value)
        y = x * scale + shift if (scale != 1 or shift != 0) else x
        return y if power == 1 else y.pow(power)

    return _Elementwise(layer, fn)


def _exp(layer: "Layer") -> CaffeOp:
    p = layer.param.exp_param
    base, scale, shift = float(p.base), float(p.scale), float(p.shift)
    if base != -1 and base <= 0:
        raise ModelError(f"layer {layer.name!r} (Exp): base must be -1 or positive; fix the prototxt")
    log_base = 1.0 if base == -1 else math.log(base)
    inner = log_base * scale
    outer = 1.0 if shift == 0 else (math.exp(shift) if base == -1 else base**shift)
    return _Elementwise(layer, lambda x: outer * torch.exp(inner * x))


def _log(layer: "Layer") -> CaffeOp:
    p = layer.param.log_param
    base, scale, shift = float(p.base), float(p.scale), float(p.shift)
    if base != -1 and base <= 0:
        raise ModelError(f"layer {layer.name!r} (Log): base must be -1 or positive; fix the prototxt")
    base_scale = 1.0 if base == -1 else 1.0 / math.log(base)
    return _Elementwise(layer, lambda x: torch.log(x * scale + shift) * base_scale)


def _bnll(x: Tensor) -> Tensor:
    # log(1 + exp(x)) computed without overflow, as Caffe does by branching on the sign
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-x.abs()))


def _threshold(layer: "Layer") -> CaffeOp:
    t = float(layer.param.threshold_param.threshold)
    return _Elementwise(layer, lambda x: (x > t).to(x.dtype))


def _clip(layer: "Layer") -> CaffeOp:
    p = layer.param.clip_param
    if not (p.has("min") and p.has("max")):
        raise ModelError(f"layer {layer.name!r} (Clip): clip_param needs both min and max; fix the prototxt")
    lo, hi = float(p.min), float(p.max)
    # Caffe: max(min, min(x, max)), so min wins where min > max (torch.clamp would give max)
    return _Elementwise(layer, lambda x: x.clamp(max=hi).clamp(min=lo), lambda x: x.clamp_(max=hi).clamp_(min=lo))


def _swish(layer: "Layer") -> CaffeOp:
    beta = float(layer.param.swish_param.beta)
    return _Elementwise(layer, lambda x: x * torch.sigmoid(x * beta) if beta != 1 else x * torch.sigmoid(x))


class Identity(CaffeOp):
    """Dropout at test time, and Split: every top is the bottom."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        self.ntops = len(layer.tops)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [x] * self.ntops


class Silence(CaffeOp):
    """Caffe's Silence: consumes bottoms, produces nothing."""

    def forward(self, *bottoms: Tensor) -> list[Tensor]:
        return []


class Softmax(CaffeOp):
    """Caffe's Softmax over one axis."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        self.axis = int(layer.param.softmax_param.axis)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [torch.softmax(x, dim=_axis(self.axis, x.dim(), self))]


class Eltwise(CaffeOp):
    """Caffe's Eltwise: SUM (with coefficients), PROD or MAX over all bottoms."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.eltwise_param
        self.op = p.operation
        self.coeff = [float(c) for c in p.coeff]
        if self.coeff and len(self.coeff) != len(layer.bottoms):
            raise ModelError(f"{self.where()}: give one coeff per bottom ({len(layer.bottoms)}) or none")
        if self.coeff and self.op != "SUM":
            raise ModelError(f"{self.where()}: coeff is only allowed with operation SUM; fix the prototxt")
        if self.op not in ("SUM", "PROD", "MAX"):
            raise UnsupportedLayerError(f"{self.where()}: unknown Eltwise operation {self.op}")

    def forward(self, *bottoms: Tensor) -> list[Tensor]:
        if self.op == "SUM":
            coeff = self.coeff or [1.0] * len(bottoms)
            y = bottoms[0] * coeff[0] if coeff[0] != 1 else bottoms[0]
            for b, c in zip(bottoms[1:], coeff[1:]):
                y = y + (b * c if c != 1 else b)
            return [y]
        y = bottoms[0]
        for b in bottoms[1:]:
            y = y * b if self.op == "PROD" else torch.maximum(y, b)
        return [y]


# ---------------------------------------------------------------------------
# shape layers


class Concat(CaffeOp):
    """Caffe's Concat along `axis` (or the deprecated `concat_dim`)."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.concat_param
        self.axis = int(p.concat_dim) if p.has("concat_dim") else int(p.axis)

    def forward(self, *bottoms: Tensor) -> list[Tensor]:
        if len(bottoms) == 1:
            return [bottoms[0]]
        return [torch.cat(bottoms, dim=_axis(self.axis, bottoms[0].dim(), self))]


class Slice(CaffeOp):
    """Caffe's Slice along `axis` at `slice_point`s, or into equal parts."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.slice_param
        self.axis = int(p.slice_dim) if p.has("slice_dim") else int(p.axis)
        self.points = [int(v) for v in p.slice_point]
        self.ntops = len(layer.tops)
        if self.points and len(self.points) != self.ntops - 1:
            raise ModelError(f"{self.where()}: give {self.ntops - 1} slice_point values or none; fix the prototxt")

    def forward(self, x: Tensor) -> list[Tensor]:
        axis = _axis(self.axis, x.dim(), self)
        size = x.shape[axis]
        if self.points:
            bounds = [0, *self.points, size]
        else:
            if size % self.ntops:
                raise ModelError(f"{self.where()}: axis of size {size} does not split into {self.ntops} equal parts")
            step = size // self.ntops
            bounds = [i * step for i in range(self.ntops + 1)]
        return [x.narrow(axis, a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]


class Flatten(CaffeOp):
    """Caffe's Flatten of axes [axis, end_axis] into one."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.flatten_param
        self.start, self.end = int(p.axis), int(p.end_axis)

    def forward(self, x: Tensor) -> list[Tensor]:
        a, b = _axis(self.start, x.dim(), self), _axis(self.end, x.dim(), self)
        return [x.reshape(*x.shape[:a], -1, *x.shape[b + 1 :])]


class Reshape(CaffeOp):
    """Caffe's Reshape: replace axes [axis, axis+num_axes) by `shape` (0 copies a dim, -1 infers one)."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        self.axis, self.num_axes = int(p.axis), int(p.num_axes)
        if sum(d == -1 for d in self.dims) > 1:
            raise ModelError(f"{self.where()}: at most one -1 in reshape_param.shape; fix the prototxt")

    def forward(self, x: Tensor) -> list[Tensor]:
        nd = x.dim()
        start = self.axis + nd + 1 if self.axis < 0 else self.axis  # Caffe counts negative axes from the end + 1
        end = nd if self.num_axes == -1 else start + self.num_axes
        if not 0 <= start <= end <= nd:
            raise ModelError(f"{self.where()}: axis/num_axes do not fit a {nd}-D blob; fix the prototxt")
        middle = [x.shape[start + i] if d == 0 else d for i, d in enumerate(self.dims)]
        return [x.reshape(*x.shape[:start], *middle, *x.shape[end:])]


class Crop(CaffeOp):
    """Caffe's Crop: cut bottom 0 to bottom 1's shape from `axis` on, at the given offsets."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        _require_bottoms(layer, (2,))
        p = layer.param.crop_param
        self.axis = int(p.axis)
        self.offsets = [int(v) for v in p.offset]

    def forward(self, x: Tensor, ref: Tensor) -> list[Tensor]:
        axis = _axis(self.axis, x.dim(), self)
        n = x.dim() - axis
        if self.offsets and len(self.offsets) not in (1, n):
            raise ModelError(f"{self.where()}: give one offset or one per cropped axis ({n}); fix the prototxt")
        for i in range(n):
            d = axis + i
            off = 0 if not self.offsets else self.offsets[0 if len(self.offsets) == 1 else i]
            if off + ref.shape[d] > x.shape[d]:
                raise ModelError(f"{self.where()}: crop of axis {d} runs past the bottom; fix the offsets")
            x = x.narrow(d, off, ref.shape[d])
        return [x]


class ArgMax(CaffeOp):
    """Caffe's ArgMax: top_k indices (and values with out_max_val) over `axis` or over each image."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.argmax_param
        self.top_k, self.out_max_val = int(p.top_k), bool(p.out_max_val)
        self.axis = int(p.axis) if p.has("axis") else None

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.axis is not None:
            axis = _axis(self.axis, x.dim(), self)
            values, indices = torch.topk(x, self.top_k, dim=axis)
            return [values if self.out_max_val else indices.to(x.dtype)]
        if x.dim() < 3:
            raise ModelError(
                f"{self.where()}: without axis Caffe needs a blob of at least 3 axes; set argmax_param.axis"
            )
        values, indices = torch.topk(x.reshape(x.shape[0], -1), self.top_k, dim=1)
        parts = [indices.to(x.dtype)] + ([values] if self.out_max_val else [])
        y = torch.stack(parts, dim=1)  # (N, 1 or 2, top_k)
        return [y.reshape(x.shape[0], len(parts), self.top_k, *([1] * (x.dim() - 3)))]


class Reduction(CaffeOp):
    """Caffe's Reduction: SUM, ASUM, SUMSQ or MEAN of all axes from `axis` on, times coeff."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.reduction_param
        self.op, self.axis, self.coeff = p.operation, int(p.axis), float(p.coeff)
        if self.op not in ("SUM", "ASUM", "SUMSQ", "MEAN"):
            raise UnsupportedLayerError(f"{self.where()}: unknown Reduction operation {self.op}; fix the prototxt")

    def forward(self, x: Tensor) -> list[Tensor]:
        axis = _axis(self.axis, x.dim(), self)
        flat = x.reshape(*x.shape[:axis], -1)
        if self.op == "ASUM":
            flat = flat.abs()
        elif self.op == "SUMSQ":
            flat = flat.square()
        y = flat.mean(dim=-1) if self.op == "MEAN" else flat.sum(dim=-1)
        return [y * self.coeff if self.coeff != 1 else y]


class Tile(CaffeOp):
    """Caffe's Tile: `tiles` copies of the axes from `axis` on, one after the other along `axis`."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.tile_param
        self.axis, self.tiles = int(p.axis), int(p.tiles)
        if self.tiles < 1:
            raise ModelError(f"{self.where()}: tile_param.tiles must be given and positive; fix the prototxt")

    def forward(self, x: Tensor) -> list[Tensor]:
        axis = _axis(self.axis, x.dim(), self)
        reps = [1] * x.dim()
        reps[axis] = self.tiles
        return [x.repeat(*reps)]


class Embed(CaffeOp):
    """Caffe's Embed: each value of the bottom, an integer index below input_dim, becomes a learned row."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.embed_param
        blobs = _weights(layer, 2 if p.bias_term else 1)
        self.input_dim, self.num_output = int(p.input_dim), int(p.num_output)
        self.register_buffer("weight", blobs[0].reshape(self.input_dim, self.num_output))
        self.register_buffer("bias", blobs[1].reshape(-1) if p.bias_term else None)

    def forward(self, x: Tensor) -> list[Tensor]:
        index = x.to(torch.int64)  # truncates toward zero, as Caffe's static_cast<int>
        # (an exported program cannot branch on values: there the check is left out)
        if not torch.compiler.is_exporting() and bool(((index < 0) | (index >= self.input_dim)).any()):
            raise ModelError(
                f"{self.where()}: its bottom holds values outside [0, {self.input_dim}), which are not "
                "indices into its input_dim rows; feed it integer indices"
            )
        y = self.weight[index]
        return [y + self.bias if self.bias is not None else y]


class Im2col(CaffeOp):
    """Caffe's Im2col: every convolution window as a column, channels outermost (as F.unfold orders them)."""

    def __init__(self, layer: "Layer") -> None:
        super().__init__(layer)
        p = layer.param.convolution_param
        if p.axis not in (1, -3):
            raise UnsupportedLayerError(
                f"{self.where()}: convolution_param.axis {p.axis} is not supported by the "
                "torch engine (only channel axis 1); use the caffe engine"
            )
        kernel, stride, pad, dilation = _geometry(layer, conv_geometry, p, 2)
        self.kernel, self.stride, self.pad, self.dilation = tuple(kernel), tuple(stride), tuple(pad), tuple(dilation)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4:
            raise UnsupportedLayerError(
                f"{self.where()}: the torch engine runs Im2col on 4-D blobs only, got a "
                f"{x.dim()}-D blob; use the caffe engine"
            )
        cols = F.unfold(x, self.kernel, self.dilation, self.pad, self.stride)
        out = [
            (x.shape[2 + i] + 2 * self.pad[i] - (self.dilation[i] * (self.kernel[i] - 1) + 1)) // self.stride[i] + 1
            for i in range(2)
        ]
        return [cols.reshape(x.shape[0], cols.shape[1], *out)]


# ---------------------------------------------------------------------------
# registry


def _simple(
    fn: Callable[[Tensor], Tensor], fn_: Callable[[Tensor], Tensor] | None = None
) -> Callable[["Layer"], CaffeOp]:
    return lambda layer: _Elementwise(layer, fn, fn_)


BUILDERS: dict[str, Callable[["Layer"], CaffeOp]] = {
    "Convolution": Convolution,
    "Deconvolution": Deconvolution,
    "InnerProduct": InnerProduct,
    "Pooling": Pooling,
    "LRN": LRN,
    "ReLU": _relu,
    "PReLU": PReLU,
    "ELU": _elu,
    "Sigmoid": _simple(torch.sigmoid, torch.sigmoid_),
    "TanH": _simple(torch.tanh, torch.tanh_),
    "AbsVal": _simple(torch.abs, torch.abs_),
    "Power": _power,
    "Exp": _exp,
    "Log": _log,
    "BNLL": _simple(_bnll),
    "Dropout": Identity,
    "Split": Identity,
    "Silence": Silence,
    "Softmax": Softmax,
    "Concat": Concat,
    "Slice": Slice,
    "Eltwise": Eltwise,
    "BatchNorm": BatchNorm,
    "Scale": Scale,
    "Bias": Bias,
    "Flatten": Flatten,
    "Reshape": Reshape,
    "Crop": Crop,
    "ArgMax": ArgMax,
    "MVN": MVN,
    "Reduction": Reduction,
    "Tile": Tile,
    "SPP": SPP,
    "Threshold": _threshold,
    "Embed": Embed,
    "Im2col": Im2col,
    "Clip": _clip,
    "Swish": _swish,
}

SUPPORTED_TYPES: frozenset[str] = frozenset(BUILDERS) | INPUT_TYPES


def unsupported_error(layer: "Layer", source: Any = None) -> UnsupportedLayerError:
    """The error for a layer type the torch engine cannot run, naming the layer, its type and the fix."""
    where = f" in {source}" if source else ""
    return UnsupportedLayerError(
        f"layer {layer.name!r}{where} has type {layer.type!r}, which the torch engine does not implement "
        f"(it implements {', '.join(sorted(SUPPORTED_TYPES))}); use engine 'caffe' for this model"
    )


def build_layer(layer: "Layer", source: Any = None) -> CaffeOp:
    """The torch module executing one Caffe layer; UnsupportedLayerError for a type not implemented."""
    builder = BUILDERS.get(layer.type)
    if builder is None:
        raise unsupported_error(layer, source)
    return builder(layer)
