"""The Parquet writing layer alone: string columns from buffers, shards in both storages, no pandas in writers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from savedeep.output import ColumnSpec, ShardWriter, string_array


@pytest.mark.parametrize("values", [[], ["a"], ["x", None, "héllo ✓", ""], [None, None], ["a"] * 9 + [None],
                                    ["dir/sub dir/IMG_0001.JPG", "ü" * 300]])
def test_string_array_equals_pa_array(values):
    got = string_array(values)
    got.validate(full=True)
    assert got.equals(pa.array(values, type=pa.string()))
    assert got.null_count == sum(v is None for v in values)


@pytest.mark.parametrize("storage", ["tensor", "binary"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_shard_round_trip(tmp_path, storage, dtype):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 3, 4, 5)).astype(dtype)
    b = rng.normal(size=(7, 6)).astype(dtype)
    cols = [ColumnSpec("a", (3, 4, 5), dtype, storage), ColumnSpec("b", (6,), dtype, storage)]
    w = ShardWriter(tmp_path, 0, cols, ("label",), "zstd")
    keys = [f"img_{i}.jpg" for i in range(7)]
    labels = ["cat", None, "dog", "", "ü", None, "x"]
    w.write(keys[:4], {"label": labels[:4]}, {"a": a[:4], "b": b[:4]})
    w.write(keys[4:], {"label": labels[4:]}, {"a": a[4:], "b": b[4:]})
    t = pq.read_table(w.finish())
    assert t.column("image").to_pylist() == keys and t.column("label").to_pylist() == labels
    for name, want in (("a", a), ("b", b)):
        col = t.column(name).combine_chunks()
        if storage == "binary":
            got = np.frombuffer(b"".join(v.as_py() for v in col), dtype).reshape(want.shape)
        else:
            got = col.to_numpy_ndarray()
        assert got.dtype == want.dtype and np.array_equal(got, want)


_NO_PANDAS = """
import sys
from pathlib import Path
import numpy as np
from savedeep.output import ColumnSpec, ShardWriter, write_failures
d = Path(sys.argv[1])
d.mkdir()
w = ShardWriter(d, 0, [ColumnSpec("fc7", (8,), "float16", "tensor"), ColumnSpec("p", (2, 2), "float32", "binary")],
                ("label",), "zstd")
w.write(["a.jpg", "b.jpg"], {"label": ["x", None]}, {"fc7": np.ones((2, 8), np.float16),
                                                     "p": np.zeros((2, 2, 2), np.float32)})
w.finish()
write_failures(d, [{"image": "bad.jpg", "reason": "not an image"}])
print("pandas" in sys.modules)
"""


def test_writing_shards_and_failures_does_not_import_pandas(tmp_path):
    """pandas costs a writer 0.25 s at its first batch and the parent as much at the end of a run."""
    out = subprocess.run([sys.executable, "-c", _NO_PANDAS, str(tmp_path / "acts.parquet")], capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()
    assert out == "False"
    assert pq.read_table(tmp_path / "acts.failures.parquet").to_pylist() == [{"image": "bad.jpg", "reason": "not an image"}]
