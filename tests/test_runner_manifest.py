"""The manifest on its own, without a Run: what --resume and a merge of task outputs rely on."""

from __future__ import annotations

import json

import numpy as np
import pytest

import savedeep
from savedeep.errors import WorkerError
from savedeep.runner.manifest import Manifest
from savedeep.data.output import ColumnSpec, ShardWriter, journal_name, read_manifest, shard_name

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


# --------------------------------------------------------------------------- the journal


def _written() -> int:
    """The bytes this process has handed to write(2) so far (the kernel's count, however they were written)."""
    for line in open("/proc/self/io"):
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def _record_all(d, n: int, monkeypatch) -> tuple[float, float]:
    """Record ``n`` shards into a new manifest as a run does: (bytes written, fsyncs) per shard."""
    import os

    fsyncs = [0]
    real = os.fsync

    def counting(fd):
        fsyncs[0] += 1
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    header = {"config": {"note": "x" * 4000}, "blobs": {}, "blob_order": [], "metadata_columns": []}  # a header's size
    m = Manifest.new(d, header, [(k, 10 * k, 10 * k + 10) for k in range(n)])
    m.write()
    before, fsyncs[0] = _written(), 0
    for k in range(n):
        m.record_shard(k, shard_name(k), 10, [])
    return (_written() - before) / n, fsyncs[0] / n


def test_recording_a_shard_costs_the_same_whatever_the_number_of_shards(tmp_path, monkeypatch):
    # Each shard used to rewrite the whole manifest (every shard's entry, indented, fsynced): the bytes per
    # shard grew with the shards (~75 KB each at 1,000 shards against ~15 KB at 200), the run's cost with
    # their square. Now a shard is one journal line, and the whole file is written at most 4 times or so.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small = _record_all(tmp_path / "a", 200, monkeypatch)
    large = _record_all(tmp_path / "b", 1000, monkeypatch)
    assert large[0] < 1.5 * small[0] and large[0] < 1000, (small, large)  # bytes per shard: about the same
    assert small[1] <= 1.05 and large[1] <= 1.01, (small, large)  # one fsync per shard, amortised
    on_disk = json.loads((tmp_path / "b" / "_manifest.json").read_text())
    assert sum(s["complete"] for s in on_disk["shards"]) >= 750  # the file alone lags by a quarter at most
    assert sum(s["complete"] for s in read_manifest(tmp_path / "b")["shards"]) == 1000  # the reader: all


def test_a_reader_and_resume_see_the_shards_only_the_journal_records(tmp_path):
    d = tmp_path / "a.parquet"
    d.mkdir()
    m = _new(d)
    keys0 = _shard(d, 0, 0, 2)
    m.record_shard(0, shard_name(0), len(keys0), [])
    keys1 = _shard(d, 1, 2, 4, fail=("im3",))
    m.record_shard(1, shard_name(1), len(keys1), [("im3", "bad")])
    # what a crash of the parent here leaves: the file as written before the shards, and their lines
    assert not any(s["complete"] for s in json.loads((d / "_manifest.json").read_text())["shards"])
    assert len((d / journal_name()).read_bytes().splitlines()) == 2
    assert savedeep.load(d)["image"].tolist() == keys0 + keys1  # the partial output, with a warning
    again = Manifest.read(d)
    assert again.finished() == {0, 1} and again.failures() == [{"image": "im3", "reason": "bad"}]
    assert again.adopt_finished() == []  # recorded, not adopted from the shards' own records


def test_a_journal_already_folded_changes_nothing(tmp_path):
    # A crash between the rewrite of the manifest and the deletion of the journal leaves lines that the
    # file already holds: folding them again gives the same manifest.
    d = tmp_path / "a.parquet"
    d.mkdir()
    m = _new(d)
    _shard(d, 0, 0, 2)
    m.record_shard(0, shard_name(0), 2, [])
    left = (d / journal_name()).read_bytes()
    m.write()
    assert not (d / journal_name()).exists()
    (d / journal_name()).write_bytes(left)
    assert read_manifest(d)["shards"] == json.loads((d / "_manifest.json").read_text())["shards"]
    assert Manifest.read(d).finished() == {0}


def test_a_journal_of_an_earlier_attempt_is_ignored(tmp_path):
    # Attempt 1 records shard 1, then its file goes; --resume keeps shard 0 only and writes its manifest. If it
    # crashes before deleting attempt 1's journal, that journal's line for shard 1 must not mark the shard
    # (now being computed again) complete: the lines carry their attempt's journal id.
    d = tmp_path / "a.parquet"
    d.mkdir()
    m = _new(d)
    _shard(d, 0, 0, 2)
    m.record_shard(0, shard_name(0), 2, [])
    m.record_shard(1, shard_name(1), 2, [])  # its file is gone by the time the run resumes
    left = (d / journal_name()).read_bytes()
    kept = Manifest.read(d).tidy_for_resume({0}, tmp_path / "a.pk")
    resumed = Manifest.new(d, {k: v for k, v in m.data.items() if k != "shards"}, SHARDS, kept)
    resumed.write()
    (d / journal_name()).write_bytes(left)
    assert resumed.data["journal"]["id"] != m.data["journal"]["id"]
    assert [s["complete"] for s in read_manifest(d)["shards"]] == [True, False, False]


def test_a_line_cut_short_is_ignored_and_its_shard_adopted(tmp_path):
    d = tmp_path / "a.parquet"
    d.mkdir()
    m = _new(d)
    keys0 = _shard(d, 0, 0, 2)
    m.record_shard(0, shard_name(0), 2, [])
    _shard(d, 1, 2, 4)
    m.record_shard(1, shard_name(1), 2, [])
    whole = (d / journal_name()).read_bytes()
    (d / journal_name()).write_bytes(whole[:-20])  # the crash landed inside the second line's write
    assert [s["complete"] for s in read_manifest(d)["shards"]] == [True, False, False]
    assert savedeep.load(d)["image"].tolist() == keys0
    assert Manifest.read(d).adopt_finished() == [1]  # --resume still keeps it


def test_an_output_written_before_journals_reads_and_resumes(tmp_path):
    # Such a manifest has no "journal" entry and no journal beside it.
    d = tmp_path / "a.parquet"
    d.mkdir()
    m = _new(d)
    keys0 = _shard(d, 0, 0, 2)
    m.record_shard(0, shard_name(0), 2, [])
    m.write()
    old = json.loads((d / "_manifest.json").read_text())
    del old["journal"]
    (d / "_manifest.json").write_text(json.dumps(old, indent=1))
    assert savedeep.load(d)["image"].tolist() == keys0
    former = Manifest.read(d)
    assert former.finished() == {0}
    former.record_shard(1, shard_name(_shard(d, 1, 2, 4) and 1), 2, [])  # given a journal, written whole first
    assert "journal" in json.loads((d / "_manifest.json").read_text())
    kept = Manifest.read(d).tidy_for_resume({0, 1}, tmp_path / "a.pk")
    resumed = Manifest.new(d, {k: v for k, v in old.items() if k != "shards"}, SHARDS, kept)
    resumed.write()
    keys2 = _shard(d, 2, 4, 5)
    resumed.record_shard(2, shard_name(2), len(keys2), [])
    resumed.finish(devices=[], wall_s=1.0, pickle_path=tmp_path / "a.pk", pickle=False, max_pickle_bytes=0)
    assert not (d / journal_name()).exists()  # a finished output: the manifest alone
    assert savedeep.load(d)["image"].tolist() == [f"im{i}" for i in range(5)]
