"""Per-blob statistics and representational geometry of an output, streamed over its shards.

**Statistics** (:func:`blob_stats`) read one blob column, one Parquet row group
(or :data:`CHUNK_BYTES` of rows) at a time, twice: the first pass sums per unit
(count, sum, sum of squares, maximum, in float64) and over all values (minimum,
maximum, exact zeros, values that are not finite); the second fills a histogram
between the minimum and the maximum and keeps, for a few units, the rows that
drive them most. What is held besides one chunk is a few float64 vectors of the
blob's unit count: memory does not depend on the number of images.

A *unit* is one element of the blob's stored tensor (a channel at one position
of a conv blob, one cell of a pooled grid, one InnerProduct output). A unit is
**dead** when it is never above zero on any image (after a ReLU: exactly zero
everywhere). Values that are not finite (float16 overflows) are counted and left
out of every other statistic.

**Geometry.** :func:`rdm` is the representational dissimilarity matrix of one
blob between images: ``1 - r`` where ``r`` is the Pearson correlation between two
images' activation vectors (``metric="correlation"``, rsatoolbox's
``calc_rdm(..., method="correlation")``), or the squared Euclidean distance over
the number of units (``"euclidean"``, rsatoolbox's ``"euclidean"``). Above
``max_images`` images a subsample is used: ``max_images`` rows drawn without
replacement by ``numpy.random.default_rng(seed)``, kept in row order. Its memory
is the selected rows (float32) plus the ``n x n`` matrix.
:func:`blob_similarity` is the Pearson correlation between blobs' RDMs (their
upper triangles) on the same images; NaN beside a blob whose RDM is constant
(see :func:`constant_rdm`), where a correlation is undefined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from savedeep.data.output import SavedOutput
from savedeep.errors import ConfigError

CHUNK_BYTES = 8 * 2**20  # rows of one blob decoded at a time
HIST_BINS = 60
TOP_UNITS = 3  # units per blob whose top images are kept (the most variable ones)
TOP_IMAGES = 5  # images per such unit
METRICS = ("correlation", "euclidean")
DEFAULT_MAX_IMAGES = 500
DEFAULT_SEED = 0


@dataclass
class BlobStats:
    """What :func:`blob_stats` measured for one blob (every number over the finite values)."""

    blob: str
    shape: tuple[int, ...]
    dtype: str
    images: int
    units: int
    values: int  # finite values counted
    nonfinite: int  # values stored as inf or NaN
    min: float
    max: float
    mean: float
    std: float
    zeros: int  # values exactly 0
    dead_units: int  # units never above zero
    unit_mean: np.ndarray = field(repr=False)  # (units,) per-unit mean over the images
    unit_std: np.ndarray = field(repr=False)  # (units,) per-unit standard deviation (population)
    hist_edges: np.ndarray = field(repr=False)  # (bins + 1,)
    hist_counts: np.ndarray = field(repr=False)  # (bins,) int64
    top_units: list[int] = field(default_factory=list)  # flat unit indices, most variable first
    top_rows: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # unit -> [(row, value)], largest first

    @property
    def zero_fraction(self) -> float:
        return self.zeros / self.values if self.values else float("nan")

    @property
    def dead_fraction(self) -> float:
        return self.dead_units / self.units if self.units else float("nan")

    def unit_mean_spread(self) -> dict[str, float]:
        """The spread of the per-unit means: min, 5th, 50th, 95th percentile, max, standard deviation."""
        m = self.unit_mean[np.isfinite(self.unit_mean)]
        if not len(m):
            return {k: float("nan") for k in ("min", "p5", "median", "p95", "max", "std")}
        p5, p50, p95 = np.percentile(m, [5, 50, 95])
        return {
            "min": float(m.min()),
            "p5": float(p5),
            "median": float(p50),
            "p95": float(p95),
            "max": float(m.max()),
            "std": float(m.std()),
        }

    def unit_index(self, unit: int) -> tuple[int, ...]:
        """A flat unit index as an index into the blob's per-image shape (channel, y, x)."""
        return tuple(int(i) for i in np.unravel_index(unit, self.shape)) if self.shape else (unit,)

    def to_dict(self) -> dict[str, Any]:
        """The numbers as plain JSON (the report embeds them)."""
        return {
            "blob": self.blob,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "images": self.images,
            "units": self.units,
            "values": self.values,
            "nonfinite": self.nonfinite,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "zeros": self.zeros,
            "zero_fraction": self.zero_fraction,
            "dead_units": self.dead_units,
            "dead_fraction": self.dead_fraction,
            "unit_mean_spread": self.unit_mean_spread(),
            "hist_edges": self.hist_edges.tolist(),
            "hist_counts": self.hist_counts.tolist(),
            "top_units": [
                {"unit": u, "index": list(self.unit_index(u)), "rows": [[r, v] for r, v in self.top_rows.get(u, [])]}
                for u in self.top_units
            ],
        }


def _open(path: SavedOutput | Path | str) -> SavedOutput:
    return path if isinstance(path, SavedOutput) else SavedOutput.open(Path(path))


def _flat_chunks(src, blob: str, max_bytes: int = CHUNK_BYTES):
    """(first row, (n, units) float32 or float16 array) per chunk of one blob, in row order."""
    start = 0
    for part in src.iter_blob(blob, max_bytes=max_bytes):
        yield start, part.reshape(len(part), -1)
        start += len(part)


def blob_stats(
    path,
    blob: str,
    bins: int = HIST_BINS,
    top_units: int = TOP_UNITS,
    top_images: int = TOP_IMAGES,
    max_bytes: int = CHUNK_BYTES,
) -> BlobStats:
    """Statistics of one blob over every image of an output (complete or partial), in two streamed passes."""
    src = _open(path)
    (blob,) = src.select([blob])
    info = src.info(blob)
    shape = tuple(info["shape"])
    units = int(np.prod(shape, dtype=np.int64)) if shape else 1
    count = np.zeros(units, np.int64)
    s1 = np.zeros(units, np.float64)
    s2 = np.zeros(units, np.float64)
    umax = np.full(units, -np.inf)
    n = values = nonfinite = zeros = 0
    lo, hi = np.inf, -np.inf
    for _, x in _flat_chunks(src, blob, max_bytes):
        n += len(x)
        finite = np.isfinite(x)
        bad = x.size - int(finite.sum())
        if bad:
            nonfinite += bad
            x = np.where(finite, x, 0).astype(np.float64)  # 0 contributes nothing to the sums
            count += finite.sum(axis=0)
            umax = np.maximum(umax, np.where(finite, x, -np.inf).max(axis=0))
            fin_vals = x[finite]
            zeros += int((fin_vals == 0).sum())
        else:
            x = x.astype(np.float64)
            count += len(x)
            umax = np.maximum(umax, x.max(axis=0, initial=-np.inf))
            fin_vals = x.reshape(-1)
            zeros += int((fin_vals == 0).sum())
        values += fin_vals.size
        if fin_vals.size:
            lo, hi = min(lo, float(fin_vals.min())), max(hi, float(fin_vals.max()))
        s1 += x.sum(axis=0)
        s2 += np.square(x).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit_mean = s1 / count
        unit_std = np.sqrt(np.maximum(s2 / count - unit_mean**2, 0.0))
    total = float(s1.sum())
    mean = total / values if values else float("nan")
    std = float(np.sqrt(max(float(s2.sum()) / values - mean**2, 0.0))) if values else float("nan")
    dead = int((umax <= 0).sum())  # -inf (never a finite value) counts as never active

    if not values:
        lo, hi = 0.0, 1.0
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 0.5, lo + 0.5, bins + 1)
    hist = np.zeros(bins, np.int64)
    chosen = [int(u) for u in np.argsort(-np.nan_to_num(unit_std, nan=-1.0), kind="stable")[: min(top_units, units)]]
    best_v = np.full((top_images, len(chosen)), -np.inf)
    best_r = np.full((top_images, len(chosen)), -1, np.int64)
    if values:
        for start, x in _flat_chunks(src, blob, max_bytes):
            v = x[np.isfinite(x)] if nonfinite else x.reshape(-1)
            hist += np.histogram(v, bins=edges)[0]
            if chosen:
                sel = x[:, chosen].astype(np.float64)
                sel[~np.isfinite(sel)] = -np.inf
                rows = np.broadcast_to(np.arange(start, start + len(x))[:, None], sel.shape)
                all_v = np.concatenate([best_v, sel])
                all_r = np.concatenate([best_r, rows])
                # largest first; ties to the earlier row (a stable sort on (-value, row))
                order = np.lexsort((all_r, -all_v), axis=0)[:top_images]
                best_v = np.take_along_axis(all_v, order, axis=0)
                best_r = np.take_along_axis(all_r, order, axis=0)
    top_rows = {
        u: [
            (int(best_r[k, j]), float(best_v[k, j]))
            for k in range(top_images)
            if best_r[k, j] >= 0 and np.isfinite(best_v[k, j])
        ]
        for j, u in enumerate(chosen)
    }
    return BlobStats(
        blob=blob,
        shape=shape,
        dtype=info["dtype"],
        images=n,
        units=units,
        values=values,
        nonfinite=nonfinite,
        min=float(lo) if values else float("nan"),
        max=float(hi) if values else float("nan"),
        mean=mean,
        std=std,
        zeros=zeros,
        dead_units=dead,
        unit_mean=unit_mean,
        unit_std=unit_std,
        hist_edges=edges,
        hist_counts=hist,
        top_units=chosen,
        top_rows=top_rows,
    )


# --------------------------------------------------------------------------- geometry


def subsample(n: int, max_images: int | None, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The rows an RDM uses: all ``n``, or ``max_images`` drawn without replacement (seeded), in row order."""
    if max_images is not None and max_images < 2:
        raise ConfigError(f"--max-images {max_images}: an RDM needs at least 2 images; give 2 or more")
    if max_images is None or n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_images, replace=False))


def read_rows(src, blob: str, rows: np.ndarray, max_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """The given rows (sorted) of one blob as a (len(rows), units) float32 array, streamed."""
    info = src.info(blob)
    units = int(np.prod(info["shape"], dtype=np.int64)) if info["shape"] else 1
    out = np.empty((len(rows), units), np.float32)
    k = 0
    for start, x in _flat_chunks(src, blob, max_bytes):
        lo, hi = np.searchsorted(rows, [start, start + len(x)])
        if hi > lo:
            out[k : k + hi - lo] = x[rows[lo:hi] - start]
            k += hi - lo
    assert k == len(rows), (k, len(rows))
    return out


def rdm_of(x: np.ndarray, metric: str = "correlation", block: int = 4096) -> np.ndarray:
    """The RDM of the rows of ``x`` (n, units), in float64, computed over blocks of ``block`` units."""
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    n, d = x.shape
    gram = np.zeros((n, n))
    means = x.mean(axis=1, dtype=np.float64) if metric == "correlation" else np.zeros(n)
    for b in range(0, d, block):
        z = x[:, b : b + block].astype(np.float64) - means[:, None]
        gram += z @ z.T
    sq = np.diag(gram).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "correlation":
            norm = np.sqrt(sq)
            out = 1.0 - gram / norm[:, None] / norm[None, :]
        else:
            out = (sq[:, None] + sq[None, :] - 2.0 * gram) / d
    np.fill_diagonal(out, 0.0)
    return out


def rdm(
    path, blob: str, metric: str = "correlation", max_images: int | None = None, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, list[str]]:
    """(the ``n x n`` RDM of ``blob``, the ``n`` image keys in its order): see the module's text.

    ``max_images``: above this many images, a seeded subsample of that size (None: every image).
    """
    src = _open(path)
    (blob,) = src.select([blob])
    rows = subsample(src.n, max_images, seed)
    keys, _ = src.index(rows, [])
    return rdm_of(read_rows(src, blob, rows), metric), keys


def upper(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle (without the diagonal) of a square matrix, row by row (rsatoolbox's vector order)."""
    i, j = np.triu_indices(len(matrix), k=1)
    return matrix[i, j]


CONSTANT_RDM_SD = 1e-9  # a correlation RDM whose entries vary less than this is constant (its noise is rounding)


def constant_rdm(m: np.ndarray, metric: str = "correlation") -> bool:
    """True when an RDM's upper triangle does not vary beyond rounding: its correlation with another is undefined.

    A blob of two units is one: its centred vectors are +-(a, -a), so 1 - r is 0 or 2 for every pair, and
    0 everywhere when every image has the same sign (what is left is float64 rounding, about 1e-16).
    """
    v = upper(m)
    if len(v) < 2 or not np.isfinite(v).all():
        return True
    scale = 1.0 if metric == "correlation" else max(float(np.abs(v).max()), np.finfo(float).tiny)
    return float(v.std()) <= CONSTANT_RDM_SD * scale


def similarity_of(rdms: dict[str, np.ndarray], metric: str = "correlation") -> np.ndarray:
    """Pearson correlation between the RDMs' upper triangles (blobs x blobs); NaN beside a constant RDM."""
    names = list(rdms)
    out = np.full((len(names), len(names)), np.nan)
    ok = [i for i, b in enumerate(names) if not constant_rdm(rdms[b], metric)]
    if ok:
        vecs = np.stack([upper(rdms[names[i]]) for i in ok])
        out[np.ix_(ok, ok)] = np.corrcoef(vecs) if len(ok) > 1 else 1.0
    return out


def blob_similarity(
    path,
    blobs: Sequence[str] | str | None = None,
    metric: str = "correlation",
    max_images: int | None = None,
    seed: int = DEFAULT_SEED,
):
    """The blob-by-blob similarity of an output: Pearson correlation between the blobs' RDMs on the same images.

    A pandas DataFrame, blobs x blobs (all blobs by default); NaN in the row and column of a blob whose RDM is
    constant (a blob of two units, whose 1 - r is 0 or 2 for every pair).
    """
    import pandas as pd

    src = _open(path)
    names = src.select(blobs)
    rows = subsample(src.n, max_images, seed)
    rdms = {b: rdm_of(read_rows(src, b, rows), metric) for b in names}
    return pd.DataFrame(similarity_of(rdms, metric), index=names, columns=names)
