"""Receptive fields: which input pixels each spatial position of a blob can see.

Computed from the Caffe geometry that :mod:`savedeep.caffe.model` parses (kernel,
stride, pad, dilation of convolutions and poolings), layer by layer along the
net from its input, with the standard arithmetic. Along each spatial axis a blob
has a **jump** ``j`` (the distance in input pixels between neighbouring units),
a **size** ``r`` (the span of input pixels one unit depends on) and a **start**
``s`` (the first input pixel of unit 0's field; negative when padding reaches
beyond the image). Unit ``i`` then sees input pixels ``s + i*j`` to
``s + i*j + r - 1``, and its centre is ``s + i*j + (r - 1)/2``.

Pixels are those of the net's input array (after savedeep's resize and crop,
``H x W`` of the prototxt's input), numbered from 0, pixel centres at integers.

For a layer with kernel ``k``, stride ``t``, pad ``p`` and dilation ``d``
(extent ``e = d*(k - 1) + 1``)::

    j_out = j_in * t        r_out = r_in + (e - 1) * j_in        s_out = s_in - p * j_in

Pooling uses the same rule (``global_pooling``: the kernel is the whole input).
Caffe's ceil rounding only adds a last output position (whose window is clipped
at the padded border); the formula gives that position the full window, a
superset. Dilation makes a field sparse; the size given is its span.

**Several paths (Concat, Eltwise, a Scale/Bias with a second bottom).** A blob
reached through several paths (GoogLeNet's inception concats) gets, at each
position, the **smallest interval that holds the fields of every path**: their
union when they overlap, as they do in GoogLeNet. This needs the paths to agree
on the jump; when they do not, the blob has no receptive field (reported as
unknown), as have blobs after a layer whose output positions are not an affine
map of its input's (Deconvolution, InnerProduct, Reshape, Flatten, a Concat or
Slice along a spatial axis, ...). Element-wise layers (ReLU, BatchNorm, Scale,
Dropout, LRN across channels, Softmax over channels, Split, ...) keep their
input's field; LRN within a channel adds its ``local_size`` window.

**Clipping.** The field of a unit near the border reaches into the padding; the
pixels it really sees are those of the field inside the image
(:meth:`BlobRF.clipped`). The perturbation tests check exactly that interval:
changing a pixel outside it leaves the unit unchanged, changing one inside
changes it.

**Reduced blobs.** A blob pooled to a ``k x k`` grid (``reduce: {pool, grid}``)
has, for each cell, the union of the fields of the positions in the cell's bin
(:func:`reduced_bounds`). A blob pooled to one value per channel sees the union
of all its positions; a projection has no spatial axes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from savedeep.caffe.model import Layer, Net, conv_geometry, pooling_geometry

log = logging.getLogger(__name__)

# Layers whose output position i depends on input position i only (per image, any channels).
_POINTWISE = frozenset(
    {
        "ReLU",
        "PReLU",
        "ELU",
        "Sigmoid",
        "TanH",
        "AbsVal",
        "Power",
        "Exp",
        "Log",
        "BNLL",
        "Dropout",
        "BatchNorm",
        "Split",
    }
)


@dataclass(frozen=True)
class AxisRF:
    """The receptive field along one spatial axis: start of unit 0, size, jump (input pixels)."""

    start: int
    size: int
    jump: int

    def bounds(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """First and last input pixel (inclusive, unclipped) of units 0..n-1."""
        lo = self.start + self.jump * np.arange(n, dtype=np.int64)
        return lo, lo + self.size - 1


@dataclass(frozen=True)
class BlobRF:
    """A blob's receptive field along y and x, with its spatial size and the input's."""

    y: AxisRF
    x: AxisRF
    shape: tuple[int, int]  # the blob's (H, W)
    input_shape: tuple[int, int]  # the net input's (H, W)

    @property
    def size(self) -> tuple[int, int]:
        return self.y.size, self.x.size

    @property
    def jump(self) -> tuple[int, int]:
        return self.y.jump, self.x.jump

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre (input pixels, float) of each row's and each column's field."""
        return tuple(lo + (hi - lo) / 2.0 for lo, hi in (self.y.bounds(self.shape[0]), self.x.bounds(self.shape[1])))

    def clipped(self, axis: str) -> tuple[np.ndarray, np.ndarray]:
        """First and last input pixel inside the image seen by each position along ``axis`` ('y' or 'x')."""
        i = 0 if axis == "y" else 1
        lo, hi = (self.y if i == 0 else self.x).bounds(self.shape[i])
        return np.maximum(lo, 0), np.minimum(hi, self.input_shape[i] - 1)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: size, jump and start per axis (y, x)."""
        return {"size": list(self.size), "jump": list(self.jump), "start": [self.y.start, self.x.start]}


def _through(rf: AxisRF, kernel: int, stride: int, pad: int, dilation: int = 1) -> AxisRF:
    extent = dilation * (kernel - 1) + 1
    return AxisRF(rf.start - pad * rf.jump, rf.size + (extent - 1) * rf.jump, rf.jump * stride)


def _union(rfs: Sequence[BlobRF | None]) -> BlobRF | None:
    """The smallest field holding every path's field at each position; None when the paths' jumps differ."""
    if not rfs or any(r is None for r in rfs):
        return None
    first = rfs[0]
    assert first is not None
    axes = []
    for name in ("y", "x"):
        parts = [getattr(r, name) for r in rfs]
        if len({p.jump for p in parts}) != 1:
            return None
        start = min(p.start for p in parts)
        end = max(p.start + p.size for p in parts)
        axes.append(AxisRF(start, end - start, parts[0].jump))
    return BlobRF(axes[0], axes[1], first.shape, first.input_shape)


def _spatial(shape: tuple[int, ...]) -> tuple[int, int] | None:
    return (int(shape[2]), int(shape[3])) if len(shape) == 4 else None


def _layer_rf(
    layer: Layer, ins: list[BlobRF | None], in_shapes: list[tuple[int, ...]], out_shape: tuple[int, ...]
) -> BlobRF | None:
    t = layer.type
    out_hw = _spatial(out_shape)
    src = ins[0] if ins else None
    if src is None or out_hw is None:
        return None
    if t in _POINTWISE:
        return BlobRF(src.y, src.x, out_hw, src.input_shape)
    if t == "LRN":
        p = layer.param.lrn_param
        if p.norm_region == "WITHIN_CHANNEL":
            half = (p.local_size - 1) // 2
            return BlobRF(
                _through(src.y, p.local_size, 1, half), _through(src.x, p.local_size, 1, half), out_hw, src.input_shape
            )
        return BlobRF(src.y, src.x, out_hw, src.input_shape)
    if t == "Softmax":
        axis = layer.param.softmax_param.axis % len(in_shapes[0])
        return BlobRF(src.y, src.x, out_hw, src.input_shape) if axis == 1 else None
    if t == "Convolution":
        p = layer.param.convolution_param
        if p.axis % len(in_shapes[0]) != 1 or len(in_shapes[0]) != 4:
            return None
        kernel, stride, pad, dilation = conv_geometry(p, 2)
        return BlobRF(
            _through(src.y, kernel[0], stride[0], pad[0], dilation[0]),
            _through(src.x, kernel[1], stride[1], pad[1], dilation[1]),
            out_hw,
            src.input_shape,
        )
    if t == "Pooling":
        h, w = in_shapes[0][2], in_shapes[0][3]
        kernel, stride, pad = pooling_geometry(layer.param.pooling_param, h, w)
        return BlobRF(
            _through(src.y, kernel[0], stride[0], pad[0]),
            _through(src.x, kernel[1], stride[1], pad[1]),
            out_hw,
            src.input_shape,
        )
    if t == "Concat":
        p = layer.param.concat_param
        axis = (p.concat_dim if p.has("concat_dim") else p.axis) % len(in_shapes[0])
        if axis != 1:
            return None
        u = _union(ins)
        return None if u is None else BlobRF(u.y, u.x, out_hw, u.input_shape)
    if t in ("Eltwise", "Scale", "Bias"):
        # Eltwise: every bottom is a path. Scale/Bias: a second bottom with the same spatial size is a
        # path too; one without spatial axes (per-channel factors) adds nothing.
        parts: list[BlobRF | None] = [src]
        for r, s in zip(ins[1:], in_shapes[1:]):
            if _spatial(s) == _spatial(in_shapes[0]):
                parts.append(r)
            elif _spatial(s) is not None:
                return None
        u = _union(parts)
        return None if u is None else BlobRF(u.y, u.x, out_hw, u.input_shape)
    if t == "Slice":
        p = layer.param.slice_param
        axis = (p.slice_dim if p.has("slice_dim") else p.axis) % len(in_shapes[0])
        return BlobRF(src.y, src.x, out_hw, src.input_shape) if axis == 1 else None
    if t == "Crop":
        p = layer.param.crop_param
        ndim = len(in_shapes[0])
        first = p.axis % ndim
        offsets = list(p.offset)

        def offset(a: int) -> int:
            if a < first or not offsets:
                return 0
            return offsets[0] if len(offsets) == 1 else offsets[a - first]

        oy, ox = offset(2), offset(3)
        return BlobRF(
            AxisRF(src.y.start + oy * src.y.jump, src.y.size, src.y.jump),
            AxisRF(src.x.start + ox * src.x.jump, src.x.size, src.x.jump),
            out_hw,
            src.input_shape,
        )
    return None  # Deconvolution, InnerProduct, Flatten, Reshape, ArgMax, ...: no spatial map to the input


def receptive_fields(net: Net) -> dict[str, BlobRF | None]:
    """Every user-visible blob's receptive field in the net's input pixels (None: no spatial field).

    A blob rewritten by in-place layers gets the field of its last writer, as its value is that one's.
    """
    shapes = net.blob_shapes(1)
    in_shape = net.input_shape
    rfs: dict[str, BlobRF | None] = {}
    unit = AxisRF(0, 1, 1)
    for layer in net.layers:
        if layer.type == "Input":
            for top in layer.tops:
                hw = _spatial(shapes[top])
                rfs[top] = (
                    BlobRF(unit, unit, hw, hw)
                    if top == net.input_name and hw is not None and len(in_shape) == 4
                    else None
                )
            continue
        ins = [rfs.get(b) for b in layer.bottoms]
        in_shapes = [shapes[b] for b in layer.bottoms]
        for top in layer.tops:
            rfs[top] = _layer_rf(layer, ins, in_shapes, shapes[top])
    return {b: rfs.get(b) for b in net.blobs}


def reduced_bounds(lo: np.ndarray, hi: np.ndarray, edges: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Fields of the cells of a pooled grid: each cell's bin [a, b) of positions -> (lo[a], hi[b-1])."""
    pairs = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    return lo[pairs[:, 0]], hi[pairs[:, 1] - 1]


def blob_axes_bounds(rf: BlobRF, reduce: dict[str, Any] | None) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Unclipped (lo, hi) per stored position along y and x of a blob as stored (whole or pooled to a grid).

    None when the stored blob has no spatial axes (a projection, or pooling to one value per channel).
    """
    y = rf.y.bounds(rf.shape[0])
    x = rf.x.bounds(rf.shape[1])
    spec = reduce or {}
    kind = spec.get("kind", "none")
    if kind == "none":
        return {"y": y, "x": x}
    if kind == "pool" and spec.get("grid") is not None:
        return {"y": reduced_bounds(*y, spec["row_edges"]), "x": reduced_bounds(*x, spec["col_edges"])}
    return None


def model_receptive_fields(model_dir_or_prototxt) -> dict[str, BlobRF | None]:
    """Receptive fields of the blobs of a model directory or prototxt (no weights read)."""
    from pathlib import Path

    from savedeep.caffe.model import PROTOTXT_NAME, load_net

    path = Path(model_dir_or_prototxt)
    return receptive_fields(load_net(path / PROTOTXT_NAME if path.is_dir() else path))
