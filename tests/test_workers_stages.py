"""The logic of the writer and consumer roles, without processes: reordering, shards, blob outputs."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from savedeep.config import BlobSpec
from savedeep.data.output import ColumnSpec, InOrder, ShardSet, ShardWriter, shard_name, shard_record
from savedeep.data.reduce import BlobOutputs

COLS = (ColumnSpec("fc", (2,), "float32"),)


def _blobs(n, base=0.0):
    return {"fc": np.arange(n * 2, dtype=np.float32).reshape(n, 2) + base}


# ------------------------------------------------------------------------------ InOrder


def test_in_order_releases_items_in_the_given_order():
    order = InOrder([3, 1, 4, 0])
    assert order.push(1, "b1") == []
    assert order.push(4, "b4") == []
    assert order.push(3, "b3") == ["b3", "b1", "b4"]
    with pytest.raises(RuntimeError, match="1 batches unwritten"):
        order.check_complete()
    assert order.push(0, "b0") == ["b0"]
    order.check_complete()


def test_in_order_with_a_stray_item_is_not_complete():
    order = InOrder([0])
    assert order.push(7, "stray") == []
    assert order.push(0, "b0") == ["b0"]
    with pytest.raises(RuntimeError, match="a bug"):
        order.check_complete()


# ------------------------------------------------------------------------------ ShardSet


def _set(d, ranges, batches, metadata=None):
    return ShardSet(d, COLS, metadata or {}, "zstd", None, ranges, batches)


def test_a_shard_is_finished_after_its_last_batch_with_its_record(tmp_path):
    meta = {"label": ["a", "b", "c", "d", "e"]}
    with _set(tmp_path, {0: (0, 3), 1: (3, 5)}, {0: 2, 1: 1}, meta) as shards:
        shards.write(0, ["i0", "i1"], [0, 1], _blobs(2))
        assert shards.end_batch(0, []) is None
        assert not (tmp_path / shard_name(0)).exists()  # not before its last batch
        shards.write(1, ["i3", "i4"], [3, 4], _blobs(2, 10))
        rec1 = shards.end_batch(1, [])
        assert rec1 == {"index": 1, "start": 3, "stop": 5, "rows": 2, "failures": []}
        rec0 = shards.end_batch(0, [("i2", "broken")])  # a batch whose only image failed
    assert rec0 == {"index": 0, "start": 0, "stop": 3, "rows": 2, "failures": [{"image": "i2", "reason": "broken"}]}
    assert shard_record(tmp_path / shard_name(0)) == rec0
    table = pq.read_table(tmp_path / shard_name(1))
    assert table.column("image").to_pylist() == ["i3", "i4"] and table.column("label").to_pylist() == ["d", "e"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_name(0), shard_name(1)]


def test_rows_lost_are_a_bug_not_a_finished_shard(tmp_path):
    with pytest.raises(RuntimeError, match=r"shard 0: 1 rows \+ 0 failures != 2 images"):
        with _set(tmp_path, {0: (0, 2)}, {0: 1}) as shards:
            shards.write(0, ["i0"], [0], _blobs(1))
            shards.end_batch(0, [])
    assert list(tmp_path.iterdir()) == []  # the unfinished file was dropped


def test_leaving_early_drops_the_open_shards(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with _set(tmp_path, {0: (0, 4), 1: (4, 6)}, {0: 2, 1: 1}) as shards:
            shards.write(1, ["i4", "i5"], [4, 5], _blobs(2))
            shards.end_batch(1, [])
            shards.write(0, ["i0", "i1"], [0, 1], _blobs(2))
            assert (tmp_path / f".{shard_name(0)}.inprogress").exists()
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == [shard_name(1)]  # the finished one stays


def test_a_shard_writer_as_a_context_manager(tmp_path):
    with pytest.raises(ValueError):
        with ShardWriter(tmp_path, 0, COLS) as sw:
            sw.write(["a"], {}, _blobs(1))
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with ShardWriter(tmp_path, 1, COLS) as sw:
        sw.write(["a"], {}, _blobs(1))
        sw.finish({"index": 1})
    assert [p.name for p in tmp_path.iterdir()] == [shard_name(1)]


# ------------------------------------------------------------------------------ BlobOutputs


def test_blob_outputs_reduce_cast_and_count_float16_overflow():
    specs = (
        BlobSpec("whole"),
        BlobSpec("pooled", "float16", {"pool": "max", "grid": None}),
        BlobSpec("half", "float16"),
    )
    bo = BlobOutputs(specs, {"whole": (3,), "pooled": (2, 2, 2), "half": (2,)})
    bo.prepare()
    assert bo.direct == {"whole", "half"} and bo.reduced == ["pooled"]
    n = 2
    out = {
        "whole": np.zeros((4, 3), np.float32),
        "pooled": np.zeros((4, 2), np.float16),
        "half": np.zeros((4, 2), np.float16),
    }
    pooled = np.ones((n, 2, 2, 2), np.float32)
    pooled[0, 1, 0, 0] = 1e6  # overflows float16 after the max
    out["half"][:n] = [[1.0, np.inf], [np.nan, 2.0]]  # as the engine wrote it
    first = bo.fill({"pooled": pooled}, out, n)
    assert first == {"pooled": 1, "half": 2}
    assert out["pooled"][0].tolist() == [1.0, np.inf] and out["pooled"][1].tolist() == [1.0, 1.0]
    assert bo.fill({"pooled": pooled}, out, n) == {}  # only the first time is announced
    assert bo.nonfinite == {"pooled": 2, "half": 4}
    assert "pooled 2 values, half 4 values" in bo.overflow_summary()


def test_blob_outputs_without_overflow_say_nothing():
    bo = BlobOutputs((BlobSpec("h", "float16"),), {"h": (2,)})
    out = {"h": np.ones((1, 2), np.float16)}
    assert bo.fill({}, out, 1) == {} and bo.overflow_summary() is None
