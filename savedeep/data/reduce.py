"""Opt-in per-blob reductions that shrink huge blobs right after the forward pass.

One AlexNet ``conv1`` row is 96 x 55 x 55 float32 = 1.1 MB; a reduction turns it
into something a DataFrame of a million images can hold. Chosen per blob in the
config (``BlobSpec.reduce``), applied by the consumer process, and recorded in the
manifest through :meth:`Reducer.describe`. Everything here is numpy: a consumer
running the caffe engine need not have torch.

- ``{pool: mean|max, grid: null}``: one value per channel, (C, H, W) -> (C,).
- ``{pool: mean|max, grid: k}``: (C, H, W) -> (C, k, k) with the bins of
  ``torch.nn.AdaptiveAvgPool2d``: bin i covers rows floor(i*H/k) .. ceil((i+1)*H/k) - 1
  (bins overlap when k does not divide H).
- ``{project: D, seed: S}``: the flattened blob times a Gaussian matrix, see
  :func:`projection_matrix` for how the matrix is generated.

The storage dtype (float16) is not a reduction: ``apply`` always returns float32
and ``out_dtype`` tells the writer what to cast to.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from savedeep.config import BlobSpec
from savedeep.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

# Rows of the projection matrix drawn per call to the generator. Consecutive
# draws continue one stream, so the block size does not change the matrix
# (a test checks this); it only bounds the work per call.
PROJECTION_BLOCK_ROWS = 4096

# A projection matrix is held in memory by every consumer; refuse larger ones at
# start-up rather than swap at batch 1 (conv1 of AlexNet to D=1024 is 1.2 GB).
MAX_PROJECTION_BYTES = 2 * 2**30


class Reducer:
    """Turns a batch of one blob (n, *in_shape) into float32 (n, *out_shape); the identity by default."""

    kind = "none"

    def __init__(self, spec: BlobSpec, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.spec = spec
        self.in_shape = tuple(int(d) for d in in_shape)
        self.out_shape = tuple(int(d) for d in out_shape)
        self.out_dtype = np.dtype(spec.dtype)

    def prepare(self) -> None:
        """Do the expensive set-up now (consumer start-up) rather than on the first batch."""

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Reduce a batch (n, *in_shape) to float32 (n, *out_shape); may return x itself for the identity."""
        return self._checked(x)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of exactly what was done, for the manifest."""
        return {
            "blob": self.spec.name,
            "kind": self.kind,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "out_dtype": self.out_dtype.name,
        }

    def _checked(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != len(self.in_shape) + 1 or tuple(x.shape[1:]) != self.in_shape:
            raise ModelError(
                f"blob {self.spec.name!r}: the engine produced shape {tuple(x.shape[1:])} per image, but the model "
                f"declares {self.in_shape}; the prototxt's input shape and the engine disagree"
            )
        return np.ascontiguousarray(x, dtype=np.float32)


class PoolReducer(Reducer):
    """Mean or max over each channel's spatial extent, globally or on a k x k adaptive grid."""

    kind = "pool"

    def __init__(self, spec: BlobSpec, in_shape: tuple[int, ...], mode: str, grid: int | None) -> None:
        channels = in_shape[0]
        super().__init__(spec, in_shape, (channels,) if grid is None else (channels, grid, grid))
        self.mode = mode
        self.grid = grid
        if grid is not None:
            self.row_edges = adaptive_bins(in_shape[1], grid)
            self.col_edges = adaptive_bins(in_shape[2], grid)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Pool a batch (n, C, H, W) to (n, C) or (n, C, k, k), float32."""
        x = self._checked(x)
        if self.grid is None:
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            # float64 accumulation: a 55 x 55 float32 sum would lose the last digits.
            pooled = flat.max(axis=-1) if self.mode == "max" else flat.mean(axis=-1, dtype=np.float64)
            return pooled.astype(np.float32, copy=False)
        if self.mode == "max":
            pooled = _binned(_binned(x, self.col_edges, np.maximum, axis=3), self.row_edges, np.maximum, axis=2)
            return pooled.astype(np.float32, copy=False)
        # float64 accumulation, as for the global mean; reduceat's dtype avoids a float64 copy of the batch.
        sums = _binned(_binned(x, self.col_edges, np.add, axis=3, dtype=np.float64), self.row_edges, np.add, axis=2)
        rows = np.diff(self.row_edges, axis=1)[:, 0].astype(np.float64)
        cols = np.diff(self.col_edges, axis=1)[:, 0].astype(np.float64)
        return (sums / np.multiply.outer(rows, cols)).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """The pooling mode, grid and the exact bin edges used."""
        info = super().describe()
        info.update({"pool": self.mode, "grid": self.grid})
        if self.grid is not None:
            info["bins"] = "adaptive: bin i = [floor(i*size/k), ceil((i+1)*size/k)), as torch AdaptiveAvgPool2d"
            info["row_edges"] = self.row_edges.tolist()
            info["col_edges"] = self.col_edges.tolist()
        return info


class ProjectionReducer(Reducer):
    """The flattened blob times a seeded Gaussian matrix (F, D) with N(0, 1/D) entries (Johnson-Lindenstrauss)."""

    kind = "project"

    def __init__(self, spec: BlobSpec, in_shape: tuple[int, ...], dim: int, seed: int) -> None:
        super().__init__(spec, in_shape, (dim,))
        self.dim = dim
        self.seed = seed
        self.in_features = math.prod(in_shape)
        self._matrix: np.ndarray | None = None

    @property
    def matrix(self) -> np.ndarray:
        """The (F, D) float32 matrix, generated on first use (see projection_matrix)."""
        if self._matrix is None:
            self._matrix = projection_matrix(self.seed, self.in_features, self.dim)
        return self._matrix

    def prepare(self) -> None:
        """Generate the matrix now."""
        _ = self.matrix

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Project a batch (n, *in_shape) to (n, D), float32."""
        x = self._checked(x)
        return np.ascontiguousarray(x.reshape(x.shape[0], -1) @ self.matrix, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Dimension, seed and the generation recipe, enough to rebuild the matrix elsewhere."""
        info = super().describe()
        info.update(
            {
                "project": self.dim,
                "seed": self.seed,
                "in_features": self.in_features,
                "matrix": (
                    f"M = numpy.random.default_rng(seed).standard_normal(({self.in_features}, {self.dim}), "
                    f"dtype=float32) * float32(1/sqrt({self.dim})); y = x.reshape(n, -1) @ M"
                ),
                "numpy": np.__version__,
            }
        )
        return info


def adaptive_bins(size: int, k: int) -> np.ndarray:
    """(k, 2) start/end indices of PyTorch's adaptive pooling bins over ``size`` positions."""
    i = np.arange(k)
    starts = (i * size) // k
    ends = -((-(i + 1) * size) // k)  # ceil((i+1)*size/k) in exact integer arithmetic
    return np.stack([starts, ends], axis=1)


def _binned(x: np.ndarray, edges: np.ndarray, ufunc: np.ufunc, axis: int, dtype: Any = None) -> np.ndarray:
    """ufunc-reduce x over each [start, end) bin along axis, in one vectorised reduceat.

    Adaptive bins may overlap, which rules out a plain reduceat over the starts.
    Interleaving [s0, e0, s1, e1, ..., s_{k-1}] makes every even result the
    reduction over [s_i, e_i) (the last one runs to the end, which is e_{k-1});
    the odd results are the gaps or overlaps between bins and are dropped.
    Every e_i before the last is <= size - 1 because k <= size, so all indices are valid.
    """
    indices = edges.ravel()[:-1]
    return ufunc.reduceat(x, indices, axis=axis, dtype=dtype).take(np.arange(0, indices.size, 2), axis=axis)


def projection_matrix(seed: int, in_features: int, dim: int) -> np.ndarray:
    """The reproducible (in_features, dim) float32 projection matrix with N(0, 1/dim) entries.

    Definition (the same in any process and on any machine with the same numpy
    release; numpy promises stream stability for a Generator only within a
    release, so the manifest records numpy's version):

        numpy.random.default_rng(seed).standard_normal((in_features, dim), dtype=float32)
        * float32(1 / sqrt(dim))

    It is generated in place, PROJECTION_BLOCK_ROWS rows at a time, straight
    into the float32 result: no float64 temporary and no second full-size copy.
    """
    nbytes = in_features * dim * 4
    if nbytes > MAX_PROJECTION_BYTES:
        raise ConfigError(
            f"a projection of {in_features} features to {dim} needs a {nbytes / 2**30:.1f} GiB matrix in every "
            f"consumer (limit {MAX_PROJECTION_BYTES / 2**30:.0f} GiB); use a smaller project: D, "
            f"or pool the blob instead"
        )
    rng = np.random.default_rng(seed)
    scale = np.float32(1.0 / math.sqrt(dim))
    matrix = np.empty((in_features, dim), dtype=np.float32)
    for start in range(0, in_features, PROJECTION_BLOCK_ROWS):
        stop = min(start + PROJECTION_BLOCK_ROWS, in_features)
        block = matrix[start:stop]
        rng.standard_normal(out=block, dtype=np.float32)
        block *= scale
    return matrix


FLOAT16_MAX = 65504.0


def count_nonfinite_float16(x: np.ndarray) -> int:
    """How many values of a float16 array are inf or NaN (exponent bits all ones).

    Stored float16 values become inf where the float32 activation was beyond +-65504;
    reading the bits is cheaper than numpy's isinf (benchmarks/RESULTS.md).
    """
    flags = (x.view(np.uint16) & 0x7C00) == 0x7C00
    return int(np.count_nonzero(flags)) if flags.any() else 0


def make_reducer(spec: BlobSpec, shape: tuple[int, ...]) -> Reducer:
    """The reducer for one requested blob of per-image ``shape`` (no batch dimension); checks the fit."""
    shape = tuple(int(d) for d in shape)
    reduce = spec.reduce
    key = f"blobs.{spec.name}.reduce"
    if reduce is None:
        return Reducer(spec, shape, shape)
    if "pool" in reduce:
        grid = reduce.get("grid")
        if len(shape) != 3:
            raise ConfigError(
                f"{key}: blob {spec.name!r} has shape {shape}, but pooling needs a (C, H, W) blob; "
                f"remove reduce for it, or use reduce: {{project: D}}"
            )
        if reduce["pool"] not in ("mean", "max"):
            raise ConfigError(f"{key}.pool: must be mean or max, got {reduce['pool']!r}")
        _, height, width = shape
        if grid is not None and (grid > height or grid > width):
            raise ConfigError(
                f"{key}.grid: {grid} is larger than blob {spec.name!r} {shape}, whose spatial size is "
                f"{height} x {width}; use grid <= {min(height, width)}"
            )
        return PoolReducer(spec, shape, reduce["pool"], grid)
    if "project" in reduce:
        dim, seed = int(reduce["project"]), int(reduce.get("seed", 0))
        features = math.prod(shape)
        if dim * features * 4 > MAX_PROJECTION_BYTES:
            projection_matrix(seed, features, dim)  # raises the explanatory ConfigError
        if dim >= features:
            log.warning(
                "blob %r: projecting %d features to %d dimensions does not make it smaller", spec.name, features, dim
            )
        return ProjectionReducer(spec, shape, dim, seed)
    raise ConfigError(
        f"{key}: unknown reduction {reduce!r}; use {{pool: mean|max, grid: k}} or {{project: D, seed: S}}"
    )


class BlobOutputs:
    """What a consumer does with one forward's blobs, in its output slot.

    Blobs stored whole are written by the engine straight into the slot, cast to
    the stored dtype there (``direct``: the torch engine does it on all its
    threads); reduced blobs come back as float32 copies that are reduced and cast
    here. float16 values that overflow to inf (or are NaN) are counted per blob.
    """

    def __init__(self, specs: tuple[BlobSpec, ...], blob_shapes: dict[str, tuple[int, ...]]) -> None:
        self.names = [s.name for s in specs]
        self.reducers = {s.name: make_reducer(s, tuple(blob_shapes[s.name])) for s in specs}
        self.direct = {s.name for s in specs if s.reduce is None}
        self.reduced = [b for b in self.names if b not in self.direct]
        self.half = [s.name for s in specs if s.dtype == "float16"]
        self.nonfinite: dict[str, int] = {}  # float16 values stored as inf/NaN so far, per blob

    def prepare(self) -> None:
        """Work done once before the first batch (e.g. draw the projection matrices)."""
        for r in self.reducers.values():
            r.prepare()

    def fill(self, acts: dict[str, np.ndarray], out: dict[str, np.ndarray], n: int) -> dict[str, int]:
        """Reduce and cast the reduced blobs of ``acts`` into ``out`` (the direct ones are there already);
        return the blobs whose float16 values overflowed for the first time, with this batch's count."""
        for b in self.reduced:
            with np.errstate(over="ignore"):  # float16 overflow is counted below
                out[b][:n] = self.reducers[b].apply(np.asarray(acts[b][:n], dtype=np.float32))
        first: dict[str, int] = {}
        for b in self.half:
            k = count_nonfinite_float16(out[b][:n])
            if k:
                if b not in self.nonfinite:
                    first[b] = k
                self.nonfinite[b] = self.nonfinite.get(b, 0) + k
        return first

    def overflow_summary(self) -> str | None:
        """One line for the end of the run if any float16 blob overflowed, else None."""
        if not self.nonfinite:
            return None
        return (
            f"float16 blobs with values stored as inf or NaN (|x| > {FLOAT16_MAX:g} overflows): "
            + ", ".join(f"{b} {k} values" for b, k in self.nonfinite.items())
            + "; store these blobs as float32 (per-blob dtype) to keep them"
        )
