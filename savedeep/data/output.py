"""The output: Parquet shards, the manifest, the failures table and the final pickle.

For ``output: out/acts.pk`` a run writes::

    out/acts.parquet/part-00000.parquet ...   one shard per ``shard_size`` images (image range fixed)
    out/acts.parquet/_manifest.json           config, fingerprints, model hashes, preprocessing,
                                              blob shapes/dtypes, versions, shards, failures, completion
    out/acts.parquet/_manifest.journal.jsonl  while a run writes: one line per shard finished since the
                                              manifest was last written whole (read_manifest folds it in)
    out/acts.failures.parquet                 image, reason: every image that could not be used, at the end
    out/acts.pk                               pandas DataFrame, written last and atomically

The Parquet directory holds the shards and nothing else that a reader takes for
data: ``_manifest.json`` is skipped by pyarrow, pandas and Dask (a leading
underscore) and matched by no ``*.parquet`` glob (DuckDB, Polars), and the
files being written are hidden (a leading dot). So every reader given the
directory, or ``dir/*.parquet``, gets exactly the table of activations. The
failures table has other columns, so it lives beside the directory, not in it.

A shard is written to a hidden temporary name and renamed into place only when
complete; the manifest is replaced atomically (write, fsync, rename) and says
``"complete": true`` only after every shard is in place. So an interrupted run
never leaves a shard or a pickle that looks complete but is not. Between two
whole writes of the manifest, each shard recorded is one fsynced line appended
to its journal (a cost that does not grow with the number of shards); every
reader goes through :func:`read_manifest`, which folds the journal in.

Each blob is a column of Arrow's fixed-shape tensor extension type
(``arrow.fixed_shape_tensor``) whose storage is a fixed-size list of float32 or
float16; pandas, pyarrow, DuckDB and Spark read it as a fixed-size list.

With ``storage: binary`` a blob column is instead ``fixed_size_binary`` (one
value per image: its tensor's bytes, C order, little-endian), with the shape and
dtype in the field's metadata (``savedeep.shape``, ``savedeep.dtype``) and in
the manifest. Parquet writes it as one value per image rather than one per
element (with levels): 1.1-2.5x faster with zstd, 2-6x uncompressed
(benchmarks/RESULTS.md); other readers get bytes and need
``np.frombuffer(b, dtype).reshape(shape)``.

Size: the on-disk format in one module: the shard writer and every reader of the shards, the
manifest file, the failures table and the pickle must agree on names, types and metadata keys.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import pickle
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from savedeep.errors import OutputError
from savedeep.files import (
    atomic_file,
    atomic_write_bytes,
    beside,
    glob_escape,
    parquet_dir,
    sha256_file,  # noqa: F401 - also used from here
)

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
JOURNAL_SUFFIX = ".journal.jsonl"  # _manifest.json's journal: _manifest.journal.jsonl (one line per shard recorded)
SHARD_RECORD = "savedeep.shard"  # key of a shard's own record in its Parquet metadata
FAILURES_SUFFIX = ".failures.parquet"  # out/acts.failures.parquet beside out/acts.parquet/
REPORT_SUFFIX = ".report.html"  # out/acts.report.html, written by savedeep/analysis/report.py
RUN_LOG_SUFFIX = ".log"  # out/acts.log, the run log by default (savedeep/config.py's log_file)
# What `savedeep report` and `savedeep export --to ...` write beside an output by default (default_destination).
BESIDE = {"report": REPORT_SUFFIX, "netcdf": ".nc", "npy": "_npy", "mat": ".mat"}

# The run log's lines: savedeep/runner/ui.py's run_log writes them in this format, the report reads them back
# (savedeep/analysis/report.py; its summary line through run_log_line), and --overwrite knows a log for
# savedeep's by its first line. The groups: time, process, logger, level, message.
RUN_LOG_FORMAT = "%(asctime)s %(processName)s %(name)s %(levelname)s: %(message)s"
RUN_LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+) (\S+) ([A-Z]+): (.*)")


def run_log_line(logger: str, level: int, message: str) -> str:
    """One line of the run log (no newline), as the run log's handler writes a record of ``logger`` from this
    process now."""
    record = logging.makeLogRecord(
        {"name": logger, "levelno": level, "levelname": logging.getLevelName(level), "msg": message}
    )
    return logging.Formatter(RUN_LOG_FORMAT).format(record)


_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def disk_errors(what: str):
    """Turn 'disk full' and 'file too large' into an OutputError that says how to go on."""
    return _DiskErrors(what)


class _DiskErrors:
    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, OSError) and exc.errno in _FULL:
            raise OutputError(
                f"cannot write {self.what}: {exc.strerror} ({errno.errorcode[exc.errno]}). The shards already "
                "written are kept: free some space (or raise the file-size limit) and rerun the same command "
                "with --resume"
            ) from exc
        return False


def failures_path(directory: Path) -> Path:
    """The failures table that goes with the Parquet directory ``directory`` (beside it, not in it)."""
    return beside(directory, FAILURES_SUFFIX)


def shard_ranges(n_images: int, shard_size: int) -> list[tuple[int, int, int]]:
    """The fixed shards of a run: (shard, start, stop), images [k*shard_size, (k+1)*shard_size) of the sorted list."""
    return [(k, k * shard_size, min((k + 1) * shard_size, n_images)) for k in range(-(-n_images // shard_size))]


def shard_name(k: int) -> str:
    """The file name of shard ``k``."""
    return f"part-{k:05d}.parquet"


def journal_name(name: str = MANIFEST) -> str:
    """The journal of the manifest (or task record) ``name``: ``_manifest.json`` -> ``_manifest.journal.jsonl``."""
    return name.removesuffix(".json") + JOURNAL_SUFFIX


def read_manifest(directory: Path, name: str = MANIFEST) -> dict[str, Any] | None:
    """The manifest of a Parquet output directory (or, with ``name``, a task's record), or None if there is none.

    The shards its journal records are folded in (:func:`fold_journal`): this is the manifest as it stands.
    """
    path = Path(directory) / name
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OutputError(f"{path} is not valid JSON ({exc}); delete the output or rerun with --overwrite") from exc
    return fold_journal(directory, data, name)


def write_manifest(directory: Path, manifest: dict[str, Any], name: str = MANIFEST) -> None:
    """Replace the manifest (or, with ``name``, a task's record: savedeep/runner/tasks.py) atomically, then
    delete its journal, whose lines ``manifest`` holds (it was read with them folded in, or recorded them).

    A crash between the two leaves lines that say again what the manifest says: folding them changes nothing.
    """
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_bytes(Path(directory) / name, json.dumps(manifest, indent=1, sort_keys=True).encode())
    (Path(directory) / journal_name(name)).unlink(missing_ok=True)


def append_journal(directory: Path, line: dict[str, Any], name: str = MANIFEST) -> int:
    """Append one line (one finished shard) to the journal of manifest ``name`` and fsync it; the bytes written.

    Its cost is that of the line, whatever the number of shards (the manifest itself is rewritten whole only
    now and then: savedeep/runner/manifest.py). A crash inside the write leaves a last line without its
    newline, which :func:`fold_journal` ignores.
    """
    data = json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    fd = os.open(Path(directory) / journal_name(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(data)


def fold_journal(directory: Path, manifest: Any, name: str = MANIFEST) -> Any:
    """``manifest`` (changed in place) with the shards its journal records marked complete.

    Only lines of this manifest's journal (``manifest["journal"]["id"]``: a new one for each attempt of a run)
    count: a journal left by an earlier attempt says nothing about this one's shards. A line that is not whole
    JSON ending in a newline (cut short by a crash) is ignored; its shard, renamed into place with its own
    record, is adopted by --resume. A manifest without a journal (written by savedeep before journals) is
    returned as it is.
    """
    journal = manifest.get("journal") if isinstance(manifest, dict) else None
    if not isinstance(journal, dict) or not isinstance(manifest.get("shards"), list):
        return manifest
    try:
        raw = (Path(directory) / journal_name(name)).read_bytes()
    except FileNotFoundError:
        return manifest
    entries = {s.get("index"): s for s in manifest["shards"] if isinstance(s, dict)}
    for line in raw.split(b"\n")[:-1]:  # the last piece: empty, or a line cut short
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        entry = entries.get(rec.get("index")) if isinstance(rec, dict) and rec.get("id") == journal["id"] else None
        if entry is not None:
            entry.update(file=rec["file"], rows=rec["rows"], failures=rec["failures"], complete=True)
            manifest["updated"] = rec.get("updated", manifest.get("updated"))
    return manifest


@dataclass(frozen=True)
class ColumnSpec:
    """One blob column: name, per-image shape as stored, storage dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "float16"
    storage: str = "tensor"  # "tensor" | "binary"

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def tensor_type(col: ColumnSpec):
    """The Arrow fixed-shape tensor type of a column."""
    import pyarrow as pa

    value = pa.float16() if col.dtype == "float16" else pa.float32()
    return pa.fixed_shape_tensor(value, list(col.shape) or [1])


def column_type(col: ColumnSpec):
    """The Arrow type of a blob column: a fixed-shape tensor, or fixed-size binary."""
    import pyarrow as pa

    return pa.binary(col.row_bytes) if col.storage == "binary" else tensor_type(col)


def column_field(col: ColumnSpec):
    """The Arrow field of a blob column; a binary one carries its shape and dtype."""
    import pyarrow as pa

    meta = None
    if col.storage == "binary":
        meta = {"savedeep.shape": json.dumps(list(col.shape)), "savedeep.dtype": col.dtype}
    return pa.field(col.name, column_type(col), nullable=False, metadata=meta)


def tensor_array(col: ColumnSpec, values: np.ndarray):
    """An Arrow array of the column's type over ``values`` (n, *shape), without copying where Arrow allows."""
    import pyarrow as pa

    n = values.shape[0]
    values = np.ascontiguousarray(values, dtype=np.dtype(col.dtype).newbyteorder("<"))
    if col.storage == "binary":
        return pa.FixedSizeBinaryArray.from_buffers(column_type(col), n, [None, pa.py_buffer(values.reshape(-1))])
    size = int(np.prod(col.shape, dtype=np.int64)) if col.shape else 1
    flat = pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), n * size, [None, pa.py_buffer(values.reshape(-1))])
    storage = pa.FixedSizeListArray.from_arrays(flat, size)
    return pa.ExtensionArray.from_storage(tensor_type(col), storage)


def string_array(values: Sequence[str | None]):
    """An Arrow string array (None: null) built from its buffers.

    ``pa.array`` would do, but its first call imports pandas to look for pandas types
    (a cost in benchmarks/RESULTS.md): in the writers, and in the parent at the very end of a run.
    """
    import pyarrow as pa

    n = len(values)
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, n), out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise OutputError(f"{n} strings of {offsets[-1]} bytes in all: too long for one Arrow string array")
    valid = np.fromiter((v is not None for v in values), bool, n)
    nulls = n - int(valid.sum())
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(
        pa.string(),
        n,
        [bitmap, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))],
        null_count=nulls,
    )


@dataclass
class ShardWriter:
    """Streams batches into one Parquet shard; renamed into place by :meth:`finish`."""

    directory: Path
    index: int
    columns: Sequence[ColumnSpec]
    metadata_columns: Sequence[str] = ()
    compression: str = "zstd"
    compression_level: int | None = None
    rows: int = 0
    _writer: Any = field(default=None, repr=False)

    @property
    def final_path(self) -> Path:
        return self.directory / shard_name(self.index)

    @property
    def tmp_path(self) -> Path:
        return self.directory / f".{shard_name(self.index)}.inprogress"

    def schema(self):
        """The shard's Arrow schema."""
        import pyarrow as pa

        fields = [pa.field("image", pa.string(), nullable=False)]
        fields += [pa.field(m, pa.string()) for m in self.metadata_columns]
        fields += [column_field(c) for c in self.columns]
        return pa.schema(fields)

    def _writer_for(self, sink: Any):
        import pyarrow.parquet as pq

        comp = None if self.compression == "none" else self.compression
        # Dictionary encoding and statistics are useless on float tensors and
        # cost most of the write time: keep them for the key columns only.
        keys = ["image", *self.metadata_columns]
        return pq.ParquetWriter(
            sink,
            self.schema(),
            compression=comp,
            compression_level=self.compression_level if comp else None,
            use_dictionary=keys,
            write_statistics=keys,
        )

    def _open(self) -> None:
        self._writer = self._writer_for(self.tmp_path)

    def _table(self, keys: Sequence[str], metadata: dict[str, Sequence[str]], blobs: dict[str, np.ndarray]):
        import pyarrow as pa

        n = len(keys)
        arrays = [string_array(list(keys))]
        arrays += [string_array([None if v is None else str(v) for v in metadata[m]]) for m in self.metadata_columns]
        arrays += [tensor_array(c, blobs[c.name][:n]) for c in self.columns]
        return pa.Table.from_arrays(arrays, schema=self.schema())

    def write(self, keys: Sequence[str], metadata: dict[str, Sequence[str]], blobs: dict[str, np.ndarray]) -> None:
        """Append rows: ``keys`` and one (n, *shape) array per blob, in the same order."""
        if self._writer is None:
            self._open()
        n = len(keys)
        if n == 0:
            return
        self._writer.write_table(self._table(keys, metadata, blobs))
        self.rows += n

    def write_to(
        self, sink: Any, keys: Sequence[str], metadata: dict[str, Sequence[str]], blobs: dict[str, np.ndarray]
    ) -> None:
        """Write these rows as one whole file, as a shard of them would be, into ``sink`` (a pyarrow stream:
        ``savedeep validate --time`` measures the write and the compression in memory)."""
        writer = self._writer_for(sink)
        try:
            if keys:
                writer.write_table(self._table(keys, metadata, blobs))
        finally:
            writer.close()

    def finish(self, record: dict[str, Any] | None = None) -> Path:
        """Close the file with ``record`` (rows, failures) in its metadata, fsync it, rename it into place.

        The record makes a finished shard self-describing: if the parent never hears
        that it was written (the writer died right after), the shard is adopted from it.
        """
        if self._writer is None:
            self._open()
        if record is not None:
            self._writer.add_key_value_metadata({SHARD_RECORD: json.dumps(record)})
        self._writer.close()
        self._writer = None
        with open(self.tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp_path, self.final_path)
        return self.final_path

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
            self._writer = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Leaving without :meth:`finish` (an error, a stop) drops the unfinished file."""
        if self._writer is not None or self.tmp_path.exists():
            self.abort()


class InOrder:
    """Releases items in a fixed order of keys, whatever the order they arrive in (a writer's batches)."""

    def __init__(self, order: Sequence[int]) -> None:
        self._order = list(order)
        self._pos = 0
        self._pending: dict[int, Any] = {}

    def push(self, key: int, item: Any) -> list[Any]:
        """Hold ``item``; return every item now next in order (possibly none)."""
        self._pending[key] = item
        ready = []
        while self._pos < len(self._order) and self._order[self._pos] in self._pending:
            ready.append(self._pending.pop(self._order[self._pos]))
            self._pos += 1
        return ready

    def check_complete(self) -> None:
        """RuntimeError (a bug) unless every key of the order has been released."""
        if self._pos != len(self._order) or self._pending:
            raise RuntimeError(f"writer ended with {len(self._order) - self._pos} batches unwritten (a bug)")


class ShardSet:
    """A writer's shards: each opened at its first batch, finished (with its record) after its last.

    Used as a context manager: shards left unfinished on the way out are dropped, so a
    writer that fails or is stopped leaves no file that looks finished.
    """

    def __init__(
        self,
        directory: Path,
        columns: Sequence[ColumnSpec],
        metadata: dict[str, Sequence[Any]],
        compression: str,
        compression_level: int | None,
        shard_ranges: dict[int, tuple[int, int]],
        shard_batches: dict[int, int],
    ) -> None:
        self.directory, self.columns, self.metadata = Path(directory), tuple(columns), metadata
        self.compression, self.compression_level = compression, compression_level
        self.ranges = dict(shard_ranges)
        self._remaining = dict(shard_batches)  # batches still to come, per shard
        self._open: dict[int, ShardWriter] = {}
        self._failures: dict[int, list[tuple[str, str]]] = {k: [] for k in shard_batches}

    def __enter__(self) -> ShardSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for sw in self._open.values():
            sw.abort()
        self._open.clear()

    def _shard(self, k: int) -> ShardWriter:
        if k not in self._open:
            self._open[k] = ShardWriter(
                self.directory, k, self.columns, list(self.metadata), self.compression, self.compression_level
            )
        return self._open[k]

    def write(self, k: int, keys: Sequence[str], indices: Sequence[int], blobs: dict[str, np.ndarray]) -> None:
        """Append a batch's rows (``indices``: the images' positions in the list, for the metadata columns)."""
        sw = self._shard(k)
        meta = {m: [self.metadata[m][i] for i in indices] for m in self.metadata}
        with disk_errors(f"shard {sw.tmp_path.name}"):
            sw.write(keys, meta, blobs)

    def end_batch(self, k: int, failures: Sequence[tuple[str, str]]) -> dict[str, Any] | None:
        """Count one batch of shard ``k`` (with its failed images) as written; after the shard's last batch,
        finish the shard and return its record (index, start, stop, rows, failures), else None."""
        sw = self._shard(k)
        self._failures[k] += list(failures)
        self._remaining[k] -= 1
        if self._remaining[k]:
            return None
        fails = self._failures.pop(k)
        start, stop = self.ranges[k]
        if sw.rows + len(fails) != stop - start:
            raise RuntimeError(
                f"shard {k}: {sw.rows} rows + {len(fails)} failures != {stop - start} images "
                "(a bug: rows lost or duplicated)"
            )
        record = {
            "index": k,
            "start": start,
            "stop": stop,
            "rows": sw.rows,
            "failures": [{"image": key, "reason": r} for key, r in fails],
        }
        with disk_errors(f"shard {sw.final_path.name}"):
            sw.finish(record)
        del self._open[k]
        return record


def shard_record(path: Path) -> dict[str, Any] | None:
    """The record a finished shard carries (index, start, stop, rows, failures), or None if unreadable."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path).metadata or {}
        return json.loads(meta[SHARD_RECORD.encode()])
    except Exception:  # noqa: BLE001 - a damaged or foreign file is simply not adopted
        return None


def write_failures(directory: Path, failures: Sequence[dict[str, Any]]) -> Path:
    """Write the failures table (image, reason) of the Parquet directory ``directory`` atomically,
    at ``failures_path(directory)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays(
        [string_array([f["image"] for f in failures]), string_array([f["reason"] for f in failures])],
        names=["image", "reason"],
    )
    path = failures_path(directory)
    with atomic_file(path) as f:
        pq.write_table(table, f)
    return path


# --------------------------------------------------------------------------- reading


def resolve(path: Path | str) -> tuple[Path, Path | None]:
    """(the Parquet directory, the pickle or None) of an output, given any of its paths: out/acts.pk,
    out/acts.parquet, or the pickle's path of a run without a pickle."""
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).exists():
        pk = path.with_suffix(".pk")
        return path, pk if pk.exists() else None
    if path.suffix == ".parquet":
        return path, None
    pq_dir = parquet_dir(path)
    return pq_dir, path if path.is_file() else None


def default_destination(path: Path | str, kind: str) -> Path:
    """Where ``kind`` (a key of :data:`BESIDE`: the report or an export format) is written by default, beside
    the output ``path``: out/acts.pk (or out/acts.parquet) -> out/acts.report.html, out/acts.nc, ..."""
    if kind not in BESIDE:
        raise ValueError(f"default_destination: {kind!r} is not one of {', '.join(BESIDE)}")
    directory, _ = resolve(path)
    return beside(directory, BESIDE[kind])


def _chunk_to_numpy(chunk, info: dict[str, Any]) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_fixed_size_binary(chunk.type):  # storage: binary
        dtype, shape = np.dtype(info["dtype"]).newbyteorder("<"), tuple(info["shape"])
        width = chunk.type.byte_width
        raw = np.frombuffer(chunk.buffers()[1], dtype=np.uint8, count=(chunk.offset + len(chunk)) * width)
        return raw[chunk.offset * width :].view(dtype).reshape(len(chunk), *shape)
    return chunk.to_numpy_ndarray()


def column_to_numpy(column, info: dict[str, Any]) -> np.ndarray:
    """A blob column (tensor or binary storage) as an (n, *shape) array; ``info`` is its manifest entry."""
    chunks = column.chunks
    if not chunks:
        return np.empty((0, *info["shape"]), dtype=info["dtype"])
    parts = [_chunk_to_numpy(c, info) for c in chunks]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _writable(values: np.ndarray) -> np.ndarray:
    """``values``, copied if it is a read-only view of Arrow's memory (a shard read as one chunk).

    A shard of several batches comes back concatenated, so writable: without this, the rows of
    :func:`load` were writable or not depending on the batches per shard, and so was the pickle's
    encoding of each array (bytearray or bytes), which :func:`pickle_file_bytes` predicts.
    """
    values = values if values.flags.writeable else values.copy()
    native = np.dtype(values.dtype.name)
    # numpy's own dtype object in every row, so that the pickle refers to one (a dtype object per
    # shard cost a memo entry each, so the pickle's size depended on the shards)
    return values.view(native) if values.dtype == native else values


def select_blobs(blobs: Sequence[str] | str | None, available: Sequence[str], where: Path) -> list[str]:
    """The requested blobs (all by default), as every reader takes them: a list, or one comma-separated string
    as on the command line ("fc6,fc7"). An unknown name is one OutputError naming the output's blobs."""
    if blobs is None:
        return list(available)
    if isinstance(blobs, str):
        blobs = [b.strip() for b in blobs.split(",") if b.strip()]
    unknown = [b for b in blobs if b not in available]
    if unknown:
        raise OutputError(f"{where} has no blob {unknown}; it holds {list(available)}")
    return list(dict.fromkeys(blobs))


def blob_order(manifest: dict[str, Any]) -> list[str]:
    """The blob columns in the order the run asked for them (the manifest's JSON keys are sorted)."""
    return list(manifest.get("blob_order") or manifest["blobs"])


READ_BATCH_BYTES = 32 * 2**20  # rows of one blob decoded at a time by iter_rows


def iter_rows(path: Path, blob: str, info: dict[str, Any], max_bytes: int = READ_BATCH_BYTES) -> Iterator[np.ndarray]:
    """One blob's rows of one shard in order, as (n, *shape) arrays: one Parquet row group at a time (a run
    writes one per batch), a row group above ``max_bytes`` in slices of that size (at least one row).

    Row group by row group: pyarrow's ``iter_batches`` over a whole file buffered several row groups
    (benchmarks/RESULTS.md, "Figures moved out of the code"), ``read_row_group`` holds one.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = max(1, int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(info["dtype"]).itemsize)
    pf = pq.ParquetFile(path)
    for g in range(pf.num_row_groups):
        if pf.metadata.row_group(g).num_rows * row <= max_bytes:
            yield column_to_numpy(pf.read_row_group(g, columns=[blob]).column(blob), info)
            continue
        for rb in pf.iter_batches(
            batch_size=max(1, max_bytes // row), row_groups=[g], columns=[blob], use_threads=False
        ):
            yield column_to_numpy(pa.chunked_array([rb.column(0)]), info)


@dataclass
class SavedOutput:
    """An output opened for reading: the one reader behind :func:`load`, :func:`load_array`, the exports and
    xarray views (savedeep/analysis/interop.py), the statistics and the report.

    It reads the complete shards the manifest lists, in order (a partial output's with a warning), one
    blob column and one Parquet row group at a time, so memory stays bounded whatever the number of
    images; it checks each shard holds the rows its manifest entry says. Blobs are chosen the same way
    everywhere (:meth:`select`: a list or "a,b"; an unknown name is one OutputError naming the blobs).

    A pickle whose Parquet directory is not beside it (copied alone) is read whole, once, into one Parquet
    file in memory that stands for the shards (:meth:`of_pickle`): every reader works on it the same way.
    """

    directory: Path  # the Parquet directory; for a pickle alone, the pickle
    manifest: dict[str, Any]
    pickle: Path | None = None
    memory: Any = field(default=None, repr=False)  # a pickle alone: its rows as one Parquet file in memory

    @classmethod
    def open(cls, path: Path | str) -> SavedOutput:
        """The output at ``path`` (out/acts.pk or out/acts.parquet); OutputError if it is not one."""
        directory, pk = resolve(path)
        manifest = read_manifest(directory)
        if manifest is None and pk is not None:
            return cls.of_pickle(pk)
        if manifest is None:
            raise OutputError(
                f"{directory} has no {MANIFEST}: not a savedeep output; give the run's output "
                "(out/acts.pk or out/acts.parquet)"
            )
        src = cls(directory, manifest, pk)
        if src.partial:
            log.warning(
                "%s is a partial output (the run did not complete): reading %d of %d shards; finish it "
                "with `savedeep run --resume`",
                directory,
                len(src.shards),
                len(manifest.get("shards", [])),
            )
        return src

    @property
    def partial(self) -> bool:
        return not self.manifest.get("complete")

    @functools.cached_property
    def shards(self) -> list[dict[str, Any]]:
        """The manifest's entries of the complete shards, in order."""
        done = [s for s in self.manifest.get("shards", []) if s.get("complete")]
        return sorted(done, key=lambda s: s["index"])

    @classmethod
    def of_pickle(cls, pk: Path) -> SavedOutput:
        """A pickle without its Parquet directory, as an output of one shard held in memory.

        Its blobs are the columns of arrays (:func:`_pickled_blobs`), its metadata the other columns.
        """
        import pyarrow as pa

        df = _read_pickle(pk, shards=False)
        columns = _pickled_blobs(df)
        names = [c.name for c in columns]
        meta = [c for c in df.columns if c != "image" and c not in names]
        sink = pa.BufferOutputStream()
        ShardWriter(pk.parent, 0, columns, meta, compression="none").write_to(
            sink,
            [str(k) for k in df["image"]],
            {m: list(df[m]) for m in meta},
            {c.name: np.stack(df[c.name].to_numpy()) for c in columns},
        )
        manifest = {
            "format": "savedeep/1",
            "complete": True,
            "blob_order": names,
            "metadata_columns": meta,
            "blobs": {c.name: {"shape": list(c.shape), "dtype": c.dtype, "storage": c.storage} for c in columns},
            "shards": [{"index": 0, "file": pk.name, "rows": len(df), "complete": True}],
        }
        return cls(pk, manifest, pk, sink.getvalue())

    @property
    def files(self) -> list[Any]:
        """The complete shards' files, in order (a pickle alone: its one Parquet file in memory)."""
        if self.memory is not None:
            import pyarrow as pa

            return [pa.BufferReader(self.memory)]
        return [self.directory / s["file"] for s in self.shards]

    @property
    def rows(self) -> list[int]:
        """Rows per complete shard, in order."""
        return [int(s["rows"]) for s in self.shards]

    @property
    def n(self) -> int:
        return sum(self.rows)

    @property
    def blobs(self) -> list[str]:
        return blob_order(self.manifest)

    @property
    def metadata_columns(self) -> list[str]:
        return list(self.manifest.get("metadata_columns", []))

    def info(self, blob: str) -> dict[str, Any]:
        """The blob's manifest entry: stored shape, dtype, storage, reduction."""
        return self.manifest["blobs"][blob]

    def select(self, blobs: Sequence[str] | str | None) -> list[str]:
        """The requested blobs (all by default), checked against the output's (:func:`select_blobs`)."""
        return select_blobs(blobs, self.blobs, self.directory)

    def row_bytes(self, blob: str) -> int:
        info = self.info(blob)
        return int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(info["dtype"]).itemsize

    def _changed(self, k: int) -> OutputError:
        s = self.shards[k]
        return OutputError(
            f"{self.directory / s['file']} does not hold the {s['rows']} rows its manifest entry "
            "says: the output was changed after its run; run it again (--overwrite)"
        )

    def index(
        self, rows: Sequence[int] | None = None, columns: Sequence[str] | None = None
    ) -> tuple[list[str], dict[str, list[str]]]:
        """The image keys and metadata columns (all by default; a missing value is "") of ``rows`` (sorted
        row numbers; all by default), in row order: the only per-image data the exports hold whole."""
        import pyarrow.parquet as pq

        columns = self.metadata_columns if columns is None else list(columns)
        wanted = np.arange(self.n) if rows is None else np.asarray(rows, np.int64)
        keys: list[str] = []
        meta: dict[str, list[str]] = {c: [] for c in columns}
        start = 0
        for k, (f, count) in enumerate(zip(self.files, self.rows)):
            lo, hi = np.searchsorted(wanted, [start, start + count])
            if hi > lo:
                t = pq.read_table(f, columns=["image", *columns])
                if t.num_rows != count:
                    raise self._changed(k)
                pick = (wanted[lo:hi] - start).tolist()
                col = t.column("image").to_pylist()
                keys += [col[i] for i in pick]
                for c in columns:
                    values = t.column(c).to_pylist()
                    meta[c] += ["" if values[i] is None else values[i] for i in pick]
            start += count
        return keys, meta

    def iter_blob(self, blob: str, max_bytes: int = READ_BATCH_BYTES) -> Iterator[np.ndarray]:
        """One blob's rows in order, as (n, *shape) arrays: shard by shard, one Parquet row group at a
        time (:func:`iter_rows`)."""
        info = self.info(blob)
        for k, (f, count) in enumerate(zip(self.files, self.rows)):
            seen = 0
            for values in iter_rows(f, blob, info, max_bytes):
                seen += len(values)
                if seen > count:
                    raise self._changed(k)
                yield values
            if seen != count:
                raise self._changed(k)

    def read_shard(self, k: int, blob: str) -> np.ndarray:
        """The ``k``-th complete shard's rows of one blob (a lazy xarray's chunk)."""
        import pyarrow.parquet as pq

        values = column_to_numpy(pq.read_table(self.files[k], columns=[blob]).column(blob), self.info(blob))
        if len(values) != self.rows[k]:
            raise self._changed(k)
        return values

    def read_blob(self, blob: str) -> np.ndarray:
        """One blob whole, (N, *shape), in its stored dtype.

        One array of every row, filled a row group (a batch) at a time: the peak is the result and a
        row group. Reading every shard whole and concatenating held the blob twice or more (328 MiB for
        157 MB in benchmarks/bench_scale.py; 896 MiB for 300 MiB in tests/test_analysis_export_memory.py).
        """
        info = self.info(blob)
        out = np.empty((self.n, *info["shape"]), dtype=np.dtype(info["dtype"]))
        start = 0
        for part in self.iter_blob(blob):
            out[start : start + len(part)] = part
            start += len(part)
        return out

    def frame(self, blobs: Sequence[str] | str | None = None):
        """The pandas DataFrame of the shards: ``image``, the metadata columns (None where missing), one
        column of per-image arrays per blob; ``attrs["savedeep"]`` says whether it is partial."""
        import pandas as pd
        import pyarrow.parquet as pq

        names = self.select(blobs)
        meta_cols = self.metadata_columns
        parts: dict[str, list] = {"image": [], **{m: [] for m in meta_cols}, **{b: [] for b in names}}
        for k, f in enumerate(self.files):
            table = pq.read_table(f, columns=["image", *meta_cols, *names])
            if table.num_rows != self.rows[k]:
                raise self._changed(k)
            parts["image"].extend(table.column("image").to_pylist())
            for m in meta_cols:
                parts[m].extend(table.column(m).to_pylist())
            for b in names:
                parts[b].extend(list(_writable(column_to_numpy(table.column(b), self.info(b)))))
        df = pd.DataFrame(parts)
        df.attrs["savedeep"] = {"partial": self.partial, "path": str(self.directory)}
        return df


def _read_pickle(pk: Path, shards: bool):
    """The DataFrame pickled at ``pk``; OutputError if it is not one of savedeep's. None for a pickle of
    numpy 2 under numpy 1 when the Parquet shards (``shards``) hold the same rows."""
    import pandas as pd

    try:
        df = pd.read_pickle(pk)
    except ModuleNotFoundError as exc:
        # numpy 2 pickles its arrays as numpy._core, which numpy 1 does not have (Brain-Score and
        # thingsvision pin numpy<2): the Parquet shards hold the same rows and read anywhere.
        if not str(exc.name or "").startswith("numpy._core"):
            raise
        if not shards:
            raise OutputError(
                f"{pk} was pickled with numpy 2 and this is numpy {np.__version__}: read it with "
                f"numpy 2, or keep its Parquet directory {parquet_dir(pk)} beside it (any numpy "
                "reads that)"
            ) from exc
        log.info("%s was pickled with numpy 2 (this is numpy %s): reading the Parquet dataset", pk, np.__version__)
        return None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the file holds, it is not an output savedeep can read
        raise OutputError(
            f"{pk} cannot be read as a pickle ({type(exc).__name__}: {exc}): not a savedeep output"
        ) from exc
    if not isinstance(df, pd.DataFrame) or "image" not in df.columns:
        raise OutputError(f"{pk} is not a savedeep output (a pandas DataFrame with an image column)")
    return df


def _pickled_blobs(df) -> list[ColumnSpec]:
    """The blob columns of a pickled output without its manifest: those of float32 or float16 arrays (shape
    and dtype from the first row); the other columns but ``image`` are metadata. With no row, none."""
    first = df.iloc[0] if len(df) else {}
    return [
        ColumnSpec(c, tuple(first[c].shape), first[c].dtype.name)
        for c in df.columns
        if c != "image" and isinstance(first.get(c), np.ndarray) and first[c].dtype.name in ("float32", "float16")
    ]


def load(path: Path | str, blobs: Sequence[str] | str | None = None):
    """The DataFrame of an output (pickle or Parquet; complete or partial): ``image``, metadata, one column per blob.

    ``blobs``: some of the blobs only, as a list or a comma-separated string. The pickle of a complete
    output is read when there is one (it is that DataFrame); otherwise the shards, through :class:`SavedOutput`.
    """
    directory, pk = resolve(path)
    manifest = read_manifest(directory)
    if pk is not None and (manifest is None or manifest.get("complete")):
        df = _read_pickle(pk, shards=manifest is not None)
        if df is not None:
            if blobs is not None:
                held = blob_order(manifest) if manifest is not None else [c.name for c in _pickled_blobs(df)]
                wanted = select_blobs(blobs, held, directory if manifest is not None else pk)
                df = df[[c for c in df.columns if c not in held] + wanted]
            return df
    return SavedOutput.open(directory).frame(blobs)


def load_array(path: Path | str, blob: str) -> np.ndarray:
    """One blob of an output as an (N, *shape) array, reading no other blob."""
    src = SavedOutput.open(path)
    (name,) = src.select([blob])
    return src.read_blob(name)


def _pickled_attrs(directory: Path) -> dict[str, Any]:
    """The ``attrs`` of the final DataFrame, as pickled."""
    return {"manifest": str(Path(directory) / MANIFEST), "partial": False}


class _ByteCounter:
    """A file-like sink that only counts what is written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.n += n
        return n


def pickle_file_bytes(
    keys: Sequence[str], metadata: dict[str, Sequence[Any]], columns: Sequence[ColumnSpec], directory: Path
) -> int:
    """The exact size of the pickle :func:`write_pickle` writes for these rows (every image a row).

    Pickles, into a counter, the DataFrame that :func:`load` builds, with views of one zero row in
    place of the activations: the file's size depends on each array's length, shape, dtype and
    flags (numpy pickles a writable buffer as a bytearray, a read-only one as bytes), not on its
    values. That row is written to Parquet in memory and read back as :func:`load` reads a shard,
    so its flags are those of the real rows whatever pyarrow's version. Keys and metadata are fresh
    str objects, as ``to_pylist`` makes them (the pickler would share a repeated object).
    Memory: one small object per image and blob.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    def fresh(v: Any) -> str | None:
        return None if v is None else str(v).encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")

    n = len(keys)
    parts: dict[str, list] = {"image": [fresh(k) for k in keys]}
    for m, values in metadata.items():
        parts[m] = [fresh(v) for v in values]
    sink = pa.BufferOutputStream()
    ShardWriter(Path(directory), 0, columns).write_to(
        sink, ["x"], {}, {c.name: np.zeros((1, *c.shape), c.dtype) for c in columns}
    )
    row = pq.read_table(pa.BufferReader(sink.getvalue()))
    for c in columns:
        one = _writable(column_to_numpy(row.column(c.name), {"shape": list(c.shape), "dtype": c.dtype}))
        parts[c.name] = [one[0] for _ in range(n)]
    df = pd.DataFrame(parts)
    df.attrs["savedeep"] = _pickled_attrs(directory)
    sink = _ByteCounter()
    pickle.Pickler(sink, protocol=pickle.HIGHEST_PROTOCOL).dump(df)
    return sink.n


def estimate_pickle_bytes(manifest: dict[str, Any]) -> int:
    """The in-memory size of the final DataFrame's arrays."""
    rows = sum(s.get("rows", 0) for s in manifest.get("shards", []))
    per_row = sum(
        int(np.prod(b["shape"], dtype=np.int64)) * np.dtype(b["dtype"]).itemsize for b in manifest["blobs"].values()
    )
    return rows * per_row


def write_pickle(directory: Path, pickle_path: Path, max_bytes: int) -> Path:
    """Build the final DataFrame from the complete shards and pickle it atomically."""
    manifest = read_manifest(directory)
    assert manifest is not None
    need = estimate_pickle_bytes(manifest)
    if need > max_bytes:
        from savedeep.units import human_bytes

        raise OutputError(
            f"the pickle would hold {human_bytes(need)} of activations, above max_pickle_bytes "
            f"({human_bytes(max_bytes)}), so it was not written. The Parquet output in {directory} is "
            f"complete: read it with savedeep.load('{directory}') or, one blob at a time, "
            f"savedeep.load_array('{directory}', BLOB); or raise max_pickle_bytes, or use pickle: false"
        )
    df = load(directory)
    df.attrs["savedeep"] = _pickled_attrs(directory)
    with atomic_file(pickle_path) as f:
        pickle.dump(df, f, protocol=pickle.HIGHEST_PROTOCOL)
    return pickle_path


# What savedeep writes in and beside the Parquet directory: the only names --overwrite deletes.
_OURS_IN_DIR = re.compile(
    r"_manifest\.json|part-\d{5,}\.parquet|\.part-\d{5,}\.parquet\.inprogress"
    r"|\._manifest\.json\.tmp\d+|_task-\d{5,}\.json|\._task-\d{5,}\.json\.tmp\d+"
    r"|_manifest\.journal\.jsonl|_task-\d{5,}\.journal\.jsonl"
)
_LIST_AT_MOST = 10


def _is_our_manifest(path: Path) -> bool:
    try:
        return str(json.loads(path.read_text()).get("format", "")).startswith("savedeep/")
    except (OSError, ValueError, AttributeError):
        return False


def _is_our_pickle(path: Path) -> bool:
    """A DataFrame pickled by savedeep: its attrs, pickled last, carry the key 'savedeep'."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(max(0, path.stat().st_size - (1 << 16)))
            tail = f.read()
    except OSError:
        return False
    return head[:1] == b"\x80" and b"\x8c\x05attrs" in tail and b"\x8c\x08savedeep" in tail


def _is_our_failures(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names == ["image", "reason"]
    except Exception:  # noqa: BLE001 - not Parquet, unreadable: not ours
        return False


def _is_our_report(path: Path) -> bool:
    """The page `savedeep report` (or `report: true`) wrote: its head names savedeep as the generator."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'<meta name="generator" content="savedeep report">' in head


def _is_our_log(path: Path) -> bool:
    """A run log: empty, or its first line is one of savedeep's log lines."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return False
    return not first or bool(RUN_LOG_LINE.match(first.decode("utf-8", "replace")))


def output_files(pickle_path: Path, directory: Path, log_file: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(savedeep's files of an output, other files in its place): what --overwrite deletes, what makes it refuse.

    Ours: in the Parquet directory, the shards, the manifest and their temporary names
    (only if the directory holds a savedeep manifest); beside it, the pickle and the
    failures table (and their temporary names) and the run log, each if its content
    says savedeep wrote it. Anything else in the directory, or a file at one of those
    names that savedeep did not write, is foreign.
    """
    ours: list[Path] = []
    foreign: list[Path] = []
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        foreign.append(directory)
    elif directory.is_dir():
        ours_dir = _is_our_manifest(directory / MANIFEST)
        for f in sorted(directory.iterdir()):
            mine = _OURS_IN_DIR.fullmatch(f.name) and (ours_dir or f.name.startswith("."))
            (ours if mine and f.is_file() and not f.is_symlink() else foreign).append(f)
    parent = directory.parent
    checks = [
        (pickle_path, _is_our_pickle),
        (failures_path(directory), _is_our_failures),
        (beside(directory, REPORT_SUFFIX), _is_our_report),
    ]
    if log_file is not None:
        checks.append((Path(log_file), _is_our_log))
    for path, is_ours in checks:
        if path.is_symlink() or path.exists():
            (ours if path.is_file() and not path.is_symlink() and is_ours(path) else foreign).append(path)
    for name in (pickle_path.name, failures_path(directory).name):
        tmp = re.compile(re.escape(f".{name}.tmp") + r"\d+")
        ours += [f for f in parent.glob(f".{glob_escape(name)}.tmp*") if tmp.fullmatch(f.name) and f.is_file()]
    return ours, foreign


def check_removable(pickle_path: Path, directory: Path, log_file: Path | None = None) -> list[Path]:
    """The files --overwrite would delete; an OutputError listing the others if any is in the output's place."""
    pickle_path, directory = Path(pickle_path), Path(directory)
    ours, foreign = output_files(pickle_path, directory, log_file)
    if foreign:
        names = ", ".join(str(f) + ("/" if f.is_dir() and not f.is_symlink() else "") for f in foreign[:_LIST_AT_MOST])
        more = f" and {len(foreign) - _LIST_AT_MOST} more" if len(foreign) > _LIST_AT_MOST else ""
        raise OutputError(
            f"--overwrite refused: savedeep did not write {names}{more}; it deletes only its own files, "
            "so nothing was deleted: move those away (or delete them yourself), or choose another output"
        )
    return ours


def remove_output(pickle_path: Path, directory: Path, log_file: Path | None = None) -> list[Path]:
    """Delete a previous savedeep output, only the files savedeep wrote (see :func:`output_files`).

    If anything in the output's place was not written by savedeep, nothing is deleted:
    an OutputError lists those files. The folder that holds the output is never removed.
    Returns the paths deleted.
    """
    ours = check_removable(pickle_path, directory, log_file)
    for f in ours:
        f.unlink(missing_ok=True)
    if directory.is_dir():
        directory.rmdir()
    return ours
