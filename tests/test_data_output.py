"""The Parquet writing layer alone: string columns from buffers, shards in both storages, no pandas in writers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from savedeep.data.output import RUN_LOG_FORMAT, ColumnSpec, ShardWriter, string_array


@pytest.mark.parametrize(
    "values",
    [[], ["a"], ["x", None, "héllo ✓", ""], [None, None], ["a"] * 9 + [None], ["dir/sub dir/IMG_0001.JPG", "ü" * 300]],
)
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
from savedeep.data.output import ColumnSpec, ShardWriter, write_failures
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
    out = subprocess.run(
        [sys.executable, "-c", _NO_PANDAS, str(tmp_path / "acts.parquet")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert out == "False"
    assert pq.read_table(tmp_path / "acts.failures.parquet").to_pylist() == [
        {"image": "bad.jpg", "reason": "not an image"}
    ]


def _savedeep_output(parent: Path) -> tuple[Path, Path, Path, list[Path]]:
    """A savedeep output written by savedeep's own functions: (pickle, directory, log, every file of it)."""
    import logging
    import pickle

    import pandas as pd

    from savedeep.data.output import write_failures, write_manifest

    pk, d, log_file = parent / "acts.pk", parent / "acts.parquet", parent / "acts.log"
    d.mkdir(parents=True)
    write_manifest(d, {"format": "savedeep/1", "complete": False, "shards": []})
    w = ShardWriter(d, 0, [ColumnSpec("fc7", (4,), "float32")])
    w.write(["a.jpg"], {}, {"fc7": np.ones((1, 4), np.float32)})
    w.finish()
    ShardWriter(d, 1, [ColumnSpec("fc7", (4,), "float32")]).write(["b.jpg"], {}, {"fc7": np.ones((1, 4), np.float32)})
    (d / "._manifest.json.tmp123").write_text("{")  # left by a crash while replacing the manifest
    (d / "_manifest.journal.jsonl").write_text("{")  # left by a crash of the parent (savedeep/runner/manifest.py)
    write_failures(d, [{"image": "bad.jpg", "reason": "not an image"}])
    df = pd.DataFrame({"image": ["a.jpg"], "fc7": [np.ones(4, np.float32)]})
    df.attrs["savedeep"] = {"manifest": str(d / "_manifest.json"), "partial": False}
    pk.write_bytes(pickle.dumps(df, protocol=pickle.HIGHEST_PROTOCOL))
    (parent / ".acts.pk.tmp77").write_bytes(b"\x80\x05half a pickle")
    handler = logging.FileHandler(log_file)  # the run log's format (savedeep/runner/ui.py, run_log)
    handler.setFormatter(logging.Formatter(RUN_LOG_FORMAT))
    handler.emit(logging.LogRecord("savedeep.runner.pipeline", logging.INFO, __file__, 1, "rings: ...", None, None))
    handler.close()
    report = parent / "acts.report.html"  # the head savedeep/analysis/report.py writes
    report.write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>savedeep report</title>\n'
        '<meta name="generator" content="savedeep report">\n</head><body></body></html>\n'
    )
    files = sorted([*d.iterdir(), pk, log_file, parent / "acts.failures.parquet", parent / ".acts.pk.tmp77", report])
    assert any(f.name.startswith(".part-") for f in files)  # the unfinished shard is there too
    return pk, d, log_file, files


def test_overwrite_deletes_what_savedeep_wrote_and_nothing_beside_it(tmp_path):
    from savedeep.data.output import remove_output

    data = tmp_path / "data"  # `-o ~/data/acts.pk`: ~/data holds other things
    pk, d, log_file, files = _savedeep_output(data)
    (data / "stimuli.csv").write_text("path\n")
    (data / "acts.pk.bak").write_text("mine")
    (data / ".acts.lock").write_text("{}")  # the lock is the running run's, not the old output's
    deleted = remove_output(pk, d, log_file)
    assert sorted(deleted) == files
    assert sorted(p.name for p in data.iterdir()) == [".acts.lock", "acts.pk.bak", "stimuli.csv"]


@pytest.mark.parametrize(
    "foreign",
    [
        "file in the directory",
        "folder in the directory",
        "own pickle",
        "own log",
        "own failures",
        "own report page",
        "directory without manifest",
    ],
)
def test_overwrite_refuses_next_to_a_file_savedeep_did_not_write(tmp_path, foreign):
    from savedeep.errors import OutputError
    from savedeep.data.output import remove_output

    pk, d, log_file, files = _savedeep_output(tmp_path)
    if foreign == "file in the directory":
        stranger = d / "notes.txt"
        stranger.write_text("my notes")
    elif foreign == "folder in the directory":
        stranger = d / "old"
        stranger.mkdir()
        (stranger / "part-00000.parquet").write_bytes(b"x")
    elif foreign == "own pickle":
        stranger = pk
        pk.write_bytes(__import__("pickle").dumps({"my": "results"}))
    elif foreign == "own log":
        stranger = log_file
        log_file.write_text("my lab notebook\n")
    elif foreign == "own failures":
        stranger = tmp_path / "acts.failures.parquet"
        pq.write_table(pa.table({"subject": ["s1"]}), stranger)
    elif foreign == "own report page":
        stranger = tmp_path / "acts.report.html"
        stranger.write_text("<html><body>my own summary of these activations</body></html>\n")
    else:
        stranger = d / "part-00000.parquet"
        for name in ("_manifest.json", "_manifest.journal.jsonl"):
            (d / name).unlink()
            files.remove(d / name)
    before = {f: f.read_bytes() for f in files if f.is_file()}
    with pytest.raises(OutputError) as exc:
        remove_output(pk, d, log_file)
    msg = str(exc.value)
    assert f"savedeep did not write {stranger}" in msg and "nothing was deleted" in msg and "\n" not in msg
    assert {f: f.read_bytes() for f in files if f.is_file()} == before  # everything is still there
    assert stranger.exists()
