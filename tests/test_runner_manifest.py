"""The manifest on its own, without a Run: what --resume and a merge of task outputs rely on."""

from __future__ import annotations

import json

import numpy as np
import pytest

import savedeep
from savedeep.errors import WorkerError
from savedeep.runner.manifest import Manifest
from savedeep.data.output import ColumnSpec, ShardWriter, shard_name

COLS = (ColumnSpec("fc", (3,), "float32"),)
SHARDS = [(0, 0, 2), (1, 2, 4), (2, 4, 5)]


def _shard(d, k, start, stop, fail=()):
    """A real finished shard k holding images start..stop, less ``fail``, with its own record."""
    sw = ShardWriter(d, k, COLS)
    keys = [f"im{i}" for i in range(start, stop) if f"im{i}" not in fail]
    sw.write(keys, {}, {"fc": np.arange(len(keys) * 3, dtype=np.float32).reshape(-1, 3) + start})
    sw.finish(
        {
            "index": k,
            "start": start,
            "stop": stop,
            "rows": len(keys),
            "failures": [{"image": f, "reason": "bad"} for f in fail],
        }
    )
    return keys


def _new(d):
    header = {
        "blobs": {"fc": {"shape": [3], "dtype": "float32", "storage": "tensor"}},
        "blob_order": ["fc"],
        "metadata_columns": [],
    }
    m = Manifest.new(d, header, SHARDS)
    m.write()
    return m


def test_record_adopt_and_finish_without_a_run(tmp_path):
    d = tmp_path / "a.parquet"
    d.mkdir()
    m = _new(d)
    assert json.loads((d / "_manifest.json").read_text())["shards"][1]["complete"] is False
    keys0 = _shard(d, 0, 0, 2)
    m.record_shard(0, shard_name(0), len(keys0), [])
    keys1 = _shard(d, 1, 2, 4, fail=("im3",))  # renamed into place, never reported
    with pytest.raises(WorkerError, match=r"shards \[1, 2\] are not complete"):
        m.finish(devices=[], wall_s=1.0, pickle_path=tmp_path / "a.pk", pickle=False, max_pickle_bytes=0)
    assert Manifest.read(d).adopt_finished() == [1]
    m = Manifest.read(d)
    assert m.finished() == {0, 1} and m.failures() == [{"image": "im3", "reason": "bad"}]
    keys2 = _shard(d, 2, 4, 5)
    m.record_shard(2, shard_name(2), len(keys2), [])
    m.finish(
        devices=[{"device": "cpu"}], wall_s=1.0, pickle_path=tmp_path / "a.pk", pickle=True, max_pickle_bytes=1 << 20
    )
    done = json.loads((d / "_manifest.json").read_text())
    assert done["complete"] and done["summary"]["rows"] == 4 and done["pickle"]["status"] == "written"
    df = savedeep.load(tmp_path / "a.pk")
    assert list(df["image"]) == keys0 + keys1 + keys2
    assert savedeep.load(d)["image"].tolist() == keys0 + keys1 + keys2


def test_adopt_refuses_a_shard_whose_record_is_another_range(tmp_path):
    d = tmp_path / "a.parquet"
    d.mkdir()
    m = _new(d)
    _shard(d, 1, 0, 2)  # a shard 1 file recording the range of shard 0: not this run's
    assert m.adopt_finished(write=False) == [] and m.finished() == set()


def test_tidy_for_resume_keeps_only_the_kept_shards(tmp_path):
    d = tmp_path / "a.parquet"
    d.mkdir()
    m = _new(d)
    _shard(d, 0, 0, 2)
    _shard(d, 1, 2, 4)
    (d / ".part-00002.parquet.inprogress").write_bytes(b"half")
    (tmp_path / "a.pk").write_bytes(b"old")
    kept = m.tidy_for_resume({0}, tmp_path / "a.pk")
    assert set(kept) == {0} and kept[0]["complete"]
    assert sorted(f.name for f in d.iterdir()) == ["_manifest.json", shard_name(0)]
    assert not (tmp_path / "a.pk").exists()
