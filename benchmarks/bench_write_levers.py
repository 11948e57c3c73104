"""The Parquet writer's levers for a conv blob in the default (tensor) storage, side by side.

Real activations: CaffeNet conv1 (96 x 55 x 55) of 64 benchmark photos, forwarded once by the
torch engine, tiled to ``--rows`` rows and cast to the stored dtype. Each variant writes them
as savedeep's writer does (``output.tensor_array`` columns, a ``write_table`` per batch of 32,
no dictionary or statistics on the blob column) with one pyarrow option changed; variants run
interleaved, ``--repeats`` times, and the median is reported with the ratio to the default and
the bytes on disk as a fraction of raw float32 (the issue's limit: 30% for float16). Each
variant's file is read back by pyarrow (values compared), DuckDB and Polars (the readers
tests/test_data_readers.py covers), so that a faster encoding that a reader cannot read shows.

Writes benchmarks/out/write_levers.json.

Usage: python benchmarks/bench_write_levers.py [--dtype float16] [--rows 384] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402
from common import OUT  # noqa: E402

BSS = {"conv1.list.element": "BYTE_STREAM_SPLIT"}
VARIANTS = {  # name -> (storage, ParquetWriter options, rows per write_table)
    "default (zstd, level 1)": ("tensor", {}, 32),
    "storage: binary": ("binary", {}, 32),
    "BYTE_STREAM_SPLIT": ("tensor", {"column_encoding": BSS}, 32),
    "BYTE_STREAM_SPLIT + page v2": ("tensor", {"column_encoding": BSS, "data_page_version": "2.0"}, 32),
    "zstd level -1": ("tensor", {"compression_level": -1}, 32),
    "zstd level 3": ("tensor", {"compression_level": 3}, 32),
    "data page 64 KiB": ("tensor", {"data_page_size": 64 << 10}, 32),
    "data page 8 MiB": ("tensor", {"data_page_size": 8 << 20}, 32),
    "data page v2": ("tensor", {"data_page_version": "2.0"}, 32),
    "write_batch_size 64k": ("tensor", {"write_batch_size": 65536}, 32),
    "row group 128 rows": ("tensor", {}, 128),
    "lz4": ("tensor", {"compression": "lz4"}, 32),
}


def conv1_activations() -> np.ndarray:
    """conv1 of the first 64 benchmark photos (torch engine, batch 32), float32."""
    cache = OUT / "conv1_acts.npy"
    if cache.exists():
        return np.load(cache)
    from bench_stages import preprocessed
    from savedeep.engines import create_engine
    from savedeep.caffe.model import load_model

    d = common.caffenet_dir()
    x = preprocessed(d, common.image_paths(64))
    eng = create_engine("torch", load_model(d), "cpu", 32)
    acts = np.concatenate([eng.forward(np.ascontiguousarray(x[a : a + 32]), ["conv1"])["conv1"] for a in (0, 32)])
    np.save(cache, acts)
    return acts


def write(path: Path, acts: np.ndarray, storage: str, options: dict, per_write: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from savedeep.data.output import ColumnSpec, column_field, string_array, tensor_array

    col = ColumnSpec("conv1", tuple(acts.shape[1:]), str(acts.dtype), storage)
    schema = pa.schema([pa.field("image", pa.string(), nullable=False), column_field(col)])
    keys = [f"all/img_{i:05d}.jpg" for i in range(len(acts))]
    kw = {"compression": "zstd", "use_dictionary": ["image"], "write_statistics": ["image"], **options}
    if "column_encoding" in kw:
        kw["use_dictionary"] = False  # pyarrow refuses a column encoding beside dictionary encoding
    t0 = time.perf_counter()
    w = pq.ParquetWriter(path, schema, **kw)
    for a in range(0, len(acts), per_write):
        z = min(a + per_write, len(acts))
        w.write_table(pa.Table.from_arrays([string_array(keys[a:z]), tensor_array(col, acts[a:z])], schema=schema))
    w.close()
    return time.perf_counter() - t0


def readers(path: Path, acts: np.ndarray, storage: str) -> str:
    """Which readers give the values back: pyarrow always; DuckDB and Polars for the tensor storage."""
    import pyarrow.parquet as pq

    from savedeep.data.output import column_to_numpy

    got = column_to_numpy(
        pq.read_table(path).column("conv1"), {"shape": list(acts.shape[1:]), "dtype": str(acts.dtype)}
    )
    ok = ["pyarrow" if np.array_equal(got, acts) else "pyarrow WRONG"]
    if storage != "tensor":
        return ", ".join(ok) + " (others: bytes)"
    for name, read in (("duckdb", _duckdb), ("polars", _polars)):
        try:
            vals = np.asarray(read(path), dtype=acts.dtype).reshape(acts.shape)
            ok.append(name if np.array_equal(vals, acts) else f"{name} WRONG")
        except Exception as exc:  # noqa: BLE001 - a reader that cannot read the file is the finding
            ok.append(f"{name} FAILS ({str(exc).splitlines()[0][:80]})")
    return ", ".join(ok)


def _duckdb(path: Path):
    import duckdb

    return [np.asarray(v) for v in duckdb.sql(f"SELECT conv1 FROM '{path}'").df()["conv1"]]


def _polars(path: Path):
    import polars as pl

    return pl.read_parquet(path)["conv1"].to_list()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--rows", type=int, default=384)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rows, args.repeats = 64, 1
    m = common.machine()
    print(common.machine_line(m), flush=True)
    base = conv1_activations()
    acts = np.ascontiguousarray(base[np.resize(np.arange(len(base)), args.rows)].astype(args.dtype))
    raw_f32 = acts.size * 4
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    sizes, read_ok = {}, {}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        for _ in range(args.repeats):
            for name, (storage, options, per_write) in VARIANTS.items():
                path = Path(tmp) / "x.parquet"
                times[name].append(write(path, acts, storage, options, per_write))
                if name not in sizes:
                    sizes[name] = path.stat().st_size
                    read_ok[name] = readers(path, acts, storage)
                path.unlink()
    ref = statistics.median(times["default (zstd, level 1)"])
    rows = []
    for name in VARIANTS:
        med = statistics.median(times[name])
        rows.append(
            {
                "variant": name,
                "images/s": round(args.rows / med, 1),
                "vs default": round(ref / med, 3),
                "of raw float32": f"{100 * sizes[name] / raw_f32:.1f}%",
                "read back by": read_ok[name],
            }
        )
    print()
    common.print_table(
        rows,
        title=f"conv1 {args.dtype}, {args.rows} rows, medians of {args.repeats} interleaved "
        "repeats (one process, one thread)",
    )
    common.write_json(
        OUT / "write_levers.json",
        {"machine": m, "dtype": args.dtype, "rows": args.rows, "repeats": args.repeats, "table": rows},
    )


if __name__ == "__main__":
    main()
