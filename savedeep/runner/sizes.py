"""What a run will write, predicted before it starts, and the limits it is checked against.

NOTE [savedeep output sizes]
============================

Every size limit of a run is known before the first image (issue 30), so the
preflight (savedeep/runner/preflight.py) predicts the output and refuses what cannot
end well, before any worker starts:

- **the pickle's activations, exact**: images x the bytes of each blob as stored
  (its shape after ``reduce``, times 2 or 4 for float16 or float32). This is what
  ``max_pickle_bytes`` limits: a pickle above it is refused here, not after the
  whole run (it used to be refused at the end, with exit 5);
- **the pickle file**: for ``savedeep validate``, its exact size, by pickling a
  stand-in DataFrame with the real keys and metadata and views of one zero row
  in place of the activations (:func:`savedeep.data.output.pickle_file_bytes`; the
  size depends on the arrays' lengths, not their values), extrapolated from two
  such samples above :data:`EXACT_PICKLE_OBJECTS` (:func:`pickle_file_size`);
  in a run, a bound (activations + keys + :data:`PICKLE_ROW_BOUND` per array),
  which costs nothing and needs no pandas in the parent before the workers;
- **the Parquet shards**: an estimate. Without a forward pass the basis is the
  raw activation bytes plus the keys and a footer per shard (compression not
  counted: it saves 0-75% depending on the blob and dtype, benchmarks/RESULTS.md);
  ``savedeep validate --estimate-time`` measures the ratio on one forwarded batch written
  with the run's compression, and says so;
- **the failures table, the manifest and the log**: small, from their per-shard
  and fixed sizes.

Every figure assumes that each image decodes (a failed image is a row less).
The bytes this run will add (only the shards still to do, under ``--resume`` or
``--task``; the old output's own files count as free space under ``--overwrite``)
are compared with the free space of each file system they go to;
``space_check: false`` (``--no-space-check``) turns that refusal off, for an
estimate that is too high (a blob that compresses well) or a file system whose
free space says nothing (some network file systems). The rings' shared memory
is checked against ``/dev/shm`` by savedeep.runner.devices.size_rings as before.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from savedeep.errors import OutputError
from savedeep.units import human_bytes  # noqa: F401 - also imported from here

# A bound on the pickle's bytes per array beyond its data (numpy's reduce, the memo, framing: 25-45 measured)
PICKLE_ROW_BOUND = 64
PICKLE_FIXED = 64 * 2**10  # the DataFrame's own structure, a bound
PARQUET_SHARD_FIXED = 2 * 2**10  # a shard's schema, footer and record (an empty shard of 2 blobs: 1.2 KB)
PARQUET_CHUNK = 256  # a column's metadata in each row group (one row group per batch)
PARQUET_KEY_EXTRA = 8  # per image key beyond its UTF-8 bytes (offsets, levels), a bound
MANIFEST_FIXED = 64 * 2**10  # the manifest's header: config, hashes, preprocessing, versions, devices
MANIFEST_PER_SHARD = 160  # one shard's entry, JSON-indented
JOURNAL_PER_SHARD = 160  # one line of the manifest's journal (64 lines, or a quarter of the shards, at most)
LOG_FIXED = 32 * 2**10  # a run's log: a few dozen lines
EXACT_PICKLE_OBJECTS = 300_000  # above this many arrays and strings, the pickle file's size is extrapolated
FAILURES_FIXED = 4 * 2**10  # the failures table when no image fails


@dataclass
class BlobPrediction:
    """One blob column: its bytes per image as stored, over every image, and in Parquet (estimate)."""

    name: str
    shape: list[int]
    dtype: str
    per_image: int
    activations: int
    parquet: int


@dataclass
class Prediction:
    """What a run will write (NOTE [savedeep output sizes]); sizes in bytes."""

    images: int  # rows of the output if every image decodes
    images_todo: int  # images this run computes (--resume, --task: fewer)
    shards: int
    shards_todo: int
    blobs: list[BlobPrediction]
    parquet: int  # the whole output's shards, estimate
    parquet_todo: int  # the shards this run writes, estimate
    parquet_basis: str
    pickle: bool  # a pickle will be written (by this run, or for a task by `savedeep merge`)
    pickle_activations: int  # exact; what max_pickle_bytes limits
    max_pickle_bytes: int
    pickle_file: int | None  # None: not written
    pickle_file_exact: bool
    failures_table: int
    manifest: int
    log: int
    total_new: int  # the bytes this run adds, at most about
    free: dict[str, int | None] = field(default_factory=dict)  # folder -> free bytes on its file system
    need: dict[str, int] = field(default_factory=dict)  # folder -> bytes this run writes there
    reclaimed: dict[str, int] = field(default_factory=dict)  # folder -> bytes of the old output deleted first
    rings: int = 0  # shared memory of the rings
    by_merge: bool = False  # a task's run: the pickle, failures table and manifest are the merge's
    shm_free: int | None = None

    @property
    def pickle_refused(self) -> bool:
        return self.pickle and self.pickle_activations > self.max_pickle_bytes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pickle_refused"] = self.pickle_refused
        return out

    def lines(self) -> list[str]:
        """The prediction for people, one figure per line (savedeep validate)."""
        h = human_bytes
        out = []
        for b in self.blobs:
            out.append(
                f"  {b.name}: {h(b.per_image)} per image x {self.images} = {h(b.activations)} of activations; "
                f"Parquet about {h(b.parquet)}"
            )
        out.append(
            f"  Parquet: about {h(self.parquet)} in {self.shards} shard(s) ({self.parquet_basis})"
            + (
                f"; this run writes {self.shards_todo} of them, about {h(self.parquet_todo)}"
                if self.shards_todo != self.shards
                else ""
            )
        )
        if not self.pickle:
            out.append("  pickle: not written (pickle: false)")
        elif self.pickle_refused:
            out.append(
                f"  pickle: {h(self.pickle_activations)} of activations, above max_pickle_bytes "
                f"({h(self.max_pickle_bytes)}): the run would be refused"
            )
        else:
            kind = "exactly" if self.pickle_file_exact else "about"
            out.append(
                f"  pickle{' (written by savedeep merge)' if self.by_merge else ''}: {kind} "
                f"{h(self.pickle_file or 0)} ({self.pickle_file} bytes; {h(self.pickle_activations)} of "
                f"activations, max_pickle_bytes {h(self.max_pickle_bytes)})"
            )
        out.append(
            f"  failures table, manifest, log: about {h(self.failures_table)}, {h(self.manifest)}, {h(self.log)}"
        )
        for folder, need in self.need.items():
            free = self.free.get(folder)
            back = self.reclaimed.get(folder, 0)
            out.append(
                f"  disk: about {h(need)} to write in {folder}; "
                + ("free space unknown" if free is None else f"{h(free)} free")
                + (f" (+ {h(back)} of the old output, deleted first)" if back else "")
            )
        if self.rings:
            out.append(
                f"  shared memory: {h(self.rings)} of rings; "
                + ("/dev/shm: unknown" if self.shm_free is None else f"{h(self.shm_free)} free in /dev/shm")
            )
        return out


# --------------------------------------------------------------------------- the prediction


def _key_bytes(keys: Sequence[str]) -> int:
    """The UTF-8 bytes of ``keys`` together (one join and one encode: 1.28 M keys in milliseconds)."""
    return len("".join(keys).encode("utf-8", "surrogatepass"))


def _text_bytes(keys: Sequence[str], metadata: dict[str, Sequence[Any]], n: int) -> int:
    """The UTF-8 bytes of the first ``n`` keys and their metadata values."""
    return _key_bytes(keys[:n]) + sum(
        _key_bytes([str(v) for v in vals[:n] if v is not None]) for vals in metadata.values()
    )


def pickle_file_size(
    keys: Sequence[str], metadata: dict[str, Sequence[Any]], columns: Sequence[Any], directory: Path
) -> tuple[int, bool]:
    """(the pickle file's bytes, whether exact): exact up to EXACT_PICKLE_OBJECTS arrays and strings
    (savedeep.data.output.pickle_file_bytes; 1 M rows of 2 blobs took 12 s and 1.6 GiB), beyond that
    extrapolated from two exact samples: the bytes beyond the strings' own grow by the same amount
    per row once the pickler's memo is past its first 256 entries, and the strings' bytes are counted
    whole (within a few bytes per frame of 64 KiB)."""
    from savedeep.data.output import pickle_file_bytes

    n = len(keys)
    per_row = 1 + len(metadata) + len(columns)
    if n * per_row <= EXACT_PICKLE_OBJECTS:
        return pickle_file_bytes(keys, metadata, columns, directory), True

    def beyond_text(m: int) -> int:
        sample: dict[str, Sequence[Any]] = {k: list(v[:m]) for k, v in metadata.items()}
        return pickle_file_bytes(keys[:m], sample, columns, directory) - _text_bytes(keys, metadata, m)

    m1 = max(1000, EXACT_PICKLE_OBJECTS // (4 * per_row))
    m2 = 2 * m1
    s1, s2 = beyond_text(m1), beyond_text(m2)
    return round(s1 + (s2 - s1) * (n - m1) / (m2 - m1)) + _text_bytes(keys, metadata, n), False


def predict(
    config: Any,
    pf: Any,
    *,
    task: Any = None,
    exact_pickle: bool = False,
    parquet_ratio: float | None = None,
    ratio_basis: str = "",
) -> Prediction:
    """The output of a run of ``config`` whose preflight is ``pf`` (savedeep.runner.preflight.Preflight).

    ``exact_pickle``: the pickle file's size from a stand-in pickled (:func:`pickle_file_size`: exact
    up to 300,000 arrays and strings, then extrapolated); else a bound. ``parquet_ratio``: Parquet bytes per raw activation
    byte, measured (``ratio_basis`` says how); else 1 (compression not counted).
    """
    images = len(pf.images)
    n_shards = len(pf.plan.shards)
    todo = set(pf.plan.todo)
    images_todo = sum(z - a for k, a, z in pf.plan.shards if k in todo)
    ratio = 1.0 if parquet_ratio is None else parquet_ratio
    basis = ratio_basis or "raw activation bytes, compression not counted"
    blobs = []
    for c in pf.columns:
        per = c.row_bytes
        blobs.append(BlobPrediction(c.name, list(c.shape), c.dtype, per, per * images, math.ceil(per * images * ratio)))
    per_image = sum(b.per_image for b in blobs)
    keys = pf.images.keys
    meta_bytes = sum(_key_bytes([str(v) for v in vals if v is not None]) for vals in pf.images.metadata.values())
    fixed_per_image = PARQUET_KEY_EXTRA * (1 + len(pf.images.metadata))
    B = config.batch_size
    row_groups = sum(-(-(z - a) // B) for _, a, z in pf.plan.shards)
    columns = 1 + len(pf.images.metadata) + len(blobs)
    parquet = (
        math.ceil(per_image * images * ratio)
        + _key_bytes(keys)
        + meta_bytes
        + fixed_per_image * images
        + PARQUET_SHARD_FIXED * n_shards
        + PARQUET_CHUNK * row_groups * columns
    )
    # the shards still to do, in proportion to their images
    parquet_todo = parquet if images_todo == images else math.ceil(parquet * images_todo / max(1, images))
    pickle = bool(config.pickle)  # for a task, `savedeep merge` writes it: refused now all the same
    activations = per_image * images
    pickle_file, exact = None, False
    if pickle and activations <= config.max_pickle_bytes:
        if exact_pickle:
            pickle_file, exact = pickle_file_size(keys, pf.images.metadata, pf.columns, config.parquet_dir)
        else:
            pickle_file = (
                activations
                + _key_bytes(keys)
                + meta_bytes
                + PICKLE_ROW_BOUND * images * (len(blobs) + 1 + len(pf.images.metadata))
                + PICKLE_FIXED
            )
    journal_lines = min(n_shards, max(64, n_shards // 4))  # savedeep/runner/manifest.py, FOLD_AT
    manifest = MANIFEST_FIXED + MANIFEST_PER_SHARD * n_shards + JOURNAL_PER_SHARD * journal_lines
    pred = Prediction(
        images=images,
        images_todo=images_todo,
        shards=n_shards,
        shards_todo=len(todo),
        blobs=blobs,
        parquet=parquet,
        parquet_todo=parquet_todo,
        parquet_basis=basis,
        pickle=pickle,
        pickle_activations=activations,
        max_pickle_bytes=config.max_pickle_bytes,
        pickle_file=pickle_file,
        pickle_file_exact=exact,
        failures_table=FAILURES_FIXED,
        manifest=manifest,
        log=LOG_FIXED,
        total_new=0,
        by_merge=task is not None,
    )
    _place(pred, config, task)
    return pred


def _existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the output's folders may not exist yet)."""
    path = Path(path)
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on the file system that holds ``path`` (None: unknown)."""
    try:
        st = os.statvfs(_existing_folder(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _place(pred: Prediction, config: Any, task: Any) -> None:
    """Which folder gets which bytes, grouped by file system; the free space of each."""
    out_dir = Path(config.output).parent
    writes: list[tuple[Path, int]] = [(out_dir, pred.parquet_todo + pred.manifest)]
    if task is None:
        writes.append((out_dir, pred.failures_table + (pred.pickle_file or 0)))
    if config.log_file is not None:
        writes.append((Path(config.log_file).parent, pred.log))
    by_fs: dict[Any, tuple[str, int]] = {}
    for folder, n in writes:
        try:
            dev: Any = os.stat(_existing_folder(folder)).st_dev
        except OSError:
            dev = str(folder)
        name, total = by_fs.get(dev, (str(folder), 0))
        by_fs[dev] = (name, total + n)
    for name, total in by_fs.values():
        pred.need[name] = total
        pred.free[name] = free_bytes(Path(name))
    pred.total_new = sum(pred.need.values())


def reclaimable(config: Any, *, resume: bool, overwrite: bool, exists: bool) -> int:
    """Bytes of the old output that the run deletes before writing (--overwrite: all of savedeep's files;
    --resume: the pickle and the failures table, rewritten whole)."""
    if not exists:
        return 0
    from savedeep.data.output import failures_path, output_files

    pk, pq_dir = Path(config.output), config.parquet_dir
    if overwrite:
        files = output_files(pk, pq_dir, config.log_file)[0]
    elif resume:
        files = [pk, failures_path(pq_dir)]
    else:
        return 0
    total = 0
    for f in files:
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------- the checks


def check_pickle(pred: Prediction, config: Any) -> None:
    """OutputError (exit 5) if the pickle would be above ``max_pickle_bytes``, with the sizes and the ways out."""
    if not pred.pickle_refused:
        return
    h = human_bytes
    per_blob = ", ".join(f"{b.name} {h(b.per_image)}" for b in pred.blobs)
    raise OutputError(
        f"max_pickle_bytes: the pickle would hold {h(pred.pickle_activations)} of activations "
        f"({pred.images} images x {h(sum(b.per_image for b in pred.blobs))} per image: {per_blob}), above "
        f"max_pickle_bytes ({h(pred.max_pickle_bytes)}); nothing was started. Either write no pickle "
        "(pickle: false or --no-pickle: the Parquet output holds every row, and savedeep.load_array reads one "
        f"blob at a time), or raise max_pickle_bytes (e.g. {_round_up(pred.pickle_activations)}, if this machine has "
        "that much memory), or store less: fewer blobs, dtype: float16, or reduce: {pool: mean}"
    )


def _round_up(n: int) -> str:
    """A max_pickle_bytes value just above ``n``, as a user would write it: "6GiB", "300MiB"."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{math.ceil(n / size * 1.1)}{unit}"
    return f"{n + 1}B"


def check_space(pred: Prediction, config: Any, reclaimed: int = 0) -> None:
    """OutputError (exit 5) if a file system of the output lacks the bytes the run will write, unless
    ``config.space_check`` is off. ``reclaimed``: bytes of the old output deleted first (on the output's folder)."""
    out_dir = str(Path(config.output).parent)
    if reclaimed and out_dir in pred.need:
        pred.reclaimed[out_dir] = reclaimed
    if not getattr(config, "space_check", True):
        return
    h = human_bytes
    for folder, need in pred.need.items():
        free = pred.free.get(folder)
        if free is None:
            continue
        free += pred.reclaimed.get(folder, 0)
        if need > free:
            parts = [f"Parquet about {h(pred.parquet_todo)}"]
            if pred.pickle_file and folder == out_dir:
                parts.append(f"pickle {h(pred.pickle_file)}")
            raise OutputError(
                f"output: the file system of {folder} has {h(free)} free, and this run would write about {h(need)} "
                f"there ({', '.join(parts)}; {pred.parquet_basis}); nothing was started. Free some space, choose an "
                "output on a larger disk, or write less (pickle: false, fewer blobs, dtype: float16, reduce); if "
                "the estimate is too high (the activations compress well), rerun with --no-space-check "
                "(space_check: false)"
            )


__all__ = [
    "Prediction",
    "BlobPrediction",
    "check_pickle",
    "check_space",
    "free_bytes",
    "human_bytes",
    "predict",
    "reclaimable",
]
