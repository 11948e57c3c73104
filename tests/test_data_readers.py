"""The Parquet directory of an output reads whole, as one table, in every common reader.

The bug this is for: the failures table used to sit among the shards as
``failures.parquet``, and readers given the directory took its schema
(``image, reason``) and returned no blob column, without an error. Each reader
here must return every row of the output, every blob column and the values
``savedeep.load`` returns.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import savedeep

from conftest import copy_photos, make_bad_images

pytestmark = pytest.mark.slow

BLOBS = ["fc7", "conv1", "prob"]  # conv1 is stored float16 and pooled to (96, 2, 2): a 3-d tensor column


@pytest.fixture(scope="module")
def output(caffenet_dir, photos, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A finished run over five fixed photos and three broken files, in three shards, with failures."""
    root = tmp_path_factory.mktemp("readers")
    images = copy_photos(
        photos, root / "images", ("cat.jpg", "cat_gray.jpg", "fish-bike.jpg", "astronaut.png", "coffee.png")
    )
    make_bad_images(images, images / "cat.jpg")
    cfg = savedeep.load_config(
        None,
        model=caffenet_dir,
        images=images,
        output=root / "out" / "acts.pk",
        gpus="cpu",
        batch_size=2,
        shard_size=3,
        blobs=["fc7", {"name": "conv1", "dtype": "float16", "reduce": {"pool": "mean", "grid": 2}}, "prob"],
    )
    result = savedeep.run(cfg)
    assert result.rows == 5 and result.failures == 3
    reference = savedeep.load(root / "out" / "acts.pk")
    assert len(reference) == 5 and list(reference.columns) == ["image", *BLOBS]
    return root / "out" / "acts.parquet", reference


def _check_pandas(df: pd.DataFrame, reference: pd.DataFrame) -> None:
    """``df`` has the reference's rows and columns; blob cells are (nested) lists or arrays of its values."""
    assert sorted(df.columns) == sorted(reference.columns)
    df = df.sort_values("image").reset_index(drop=True)
    assert list(df["image"]) == list(reference["image"])
    for blob in BLOBS:
        want = np.stack(reference[blob])
        got = np.stack([np.asarray(_nested(v), dtype=want.dtype).reshape(want.shape[1:]) for v in df[blob]])
        assert np.array_equal(got, want), blob


def _nested(value):
    """A fixed-size list cell as plain nested lists (readers give lists, arrays or arrays of arrays)."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_nested(v) for v in value]
    return value.tolist() if isinstance(value, np.ndarray) else value


def _check_arrow(table: pa.Table, reference: pd.DataFrame) -> None:
    assert table.num_rows == len(reference)
    assert sorted(table.column_names) == sorted(reference.columns)
    table = table.sort_by("image")
    assert table.column("image").to_pylist() == list(reference["image"])
    for blob in BLOBS:
        got = table.column(blob).combine_chunks().to_numpy_ndarray()
        assert np.array_equal(got, np.stack(reference[blob])), blob


def test_directory_holds_only_shards_and_the_manifest(output):
    directory, _ = output
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["_manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    failures = pq.read_table(directory.with_name("acts.failures.parquet"))
    assert sorted(failures.column("image").to_pylist()) == ["bad_empty.jpg", "bad_text.jpg", "bad_truncated.jpg"]


def test_pyarrow_read_table_on_the_directory(output):
    directory, reference = output
    _check_arrow(pq.read_table(directory), reference)


def test_pyarrow_dataset_on_the_directory(output):
    import pyarrow.dataset as ds

    directory, reference = output
    _check_arrow(ds.dataset(directory, format="parquet").to_table(), reference)


def test_pandas_read_parquet_on_the_directory(output):
    directory, reference = output
    _check_pandas(pd.read_parquet(directory), reference)


def test_duckdb_glob(output):
    import duckdb

    directory, reference = output
    df = duckdb.sql(f"SELECT * FROM read_parquet('{directory}/*.parquet')").df()
    _check_pandas(df, reference)


@pytest.mark.parametrize("how", ["read_parquet", "scan_parquet"])
def test_polars_on_the_shards(output, how):
    import polars as pl

    directory, reference = output
    glob = f"{directory}/*.parquet"
    frame = pl.read_parquet(glob) if how == "read_parquet" else pl.scan_parquet(glob).collect()
    assert frame.height == len(reference)
    _check_pandas(pd.DataFrame({c: frame[c].to_list() for c in frame.columns}), reference)


def test_dask_read_parquet_on_the_directory(output):
    import dask.dataframe as dd

    directory, reference = output
    df = dd.read_parquet(directory).compute(scheduler="synchronous")
    _check_pandas(df, reference)


def test_savedeep_loaders_on_every_path_of_the_output(output, tmp_path):
    """savedeep.load and load_array given the pickle's path, the directory, or the pickle's path of an output
    without a pickle (--no-pickle: the shards are read), return the same rows and arrays."""
    directory, reference = output
    shutil.copytree(directory, tmp_path / "acts.parquet")
    no_pickle = tmp_path / "acts.pk"  # never written: the loaders must find tmp_path/acts.parquet
    for path in (directory.with_name("acts.pk"), directory, no_pickle):
        df = savedeep.load(path)
        assert list(df["image"]) == list(reference["image"]), path
        for blob in BLOBS:
            want = np.stack(reference[blob])
            assert np.array_equal(np.stack(df[blob]), want), (path, blob)
            got = savedeep.load_array(path, blob)
            assert got.dtype == want.dtype and np.array_equal(got, want), (path, blob)
    assert list(savedeep.load(no_pickle, blobs=["prob"]).columns) == ["image", "prob"]


@pytest.mark.parametrize("finished", [0, 1, 2])
def test_load_array_on_a_partial_output(output, tmp_path, finished):
    """An interrupted output with 0, 1 or 2 of its 3 shards finished: load_array gives exactly their rows,
    with the blob's shape and dtype even when there are none (mutmut survivors: the empty case and the
    one- and two-shard cases were never read)."""
    import json

    directory, reference = output
    partial = tmp_path / "acts.parquet"
    shutil.copytree(directory, partial)
    manifest = json.loads((partial / "_manifest.json").read_text())
    manifest["complete"] = False
    for s in manifest["shards"][finished:]:
        s["complete"] = False
        (partial / s["file"]).unlink()
    (partial / "_manifest.json").write_text(json.dumps(manifest))
    rows = sum(s["rows"] for s in manifest["shards"][:finished])
    for blob in BLOBS:
        want = np.stack(reference[blob])[:rows]
        got = savedeep.load_array(partial, blob)
        assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want), blob


def test_loaders_name_what_is_wrong(output, tmp_path):
    from savedeep.errors import OutputError

    directory, _ = output
    with pytest.raises(OutputError, match=r"has no blob \['fc8'\]; it holds \['fc7', 'conv1', 'prob'\]$"):
        savedeep.load_array(directory, "fc8")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutputError, match="has no _manifest.json: not a savedeep output"):
        savedeep.load_array(tmp_path / "empty", "fc7")


def test_load_takes_blobs_the_same_way_from_the_pickle_and_the_parquet_path(output):
    """A list or a comma-separated string, and an unknown name is one OutputError naming the output's blobs.

    Before: from the pickle, blobs="prob" selected the columns 'p', 'r', 'o', 'b' (pandas' KeyError), and
    blobs=["nope"] raised pandas' KeyError "['nope'] not in index"; the Parquet path had the clear error.
    """
    from savedeep.errors import OutputError

    directory, reference = output
    pickle = directory.parent / "acts.pk"
    for path in (pickle, directory):
        for blobs in ("prob", ["prob"], " fc7 , prob", ["fc7", "prob"]):
            df = savedeep.load(path, blobs=blobs)
            wanted = ["fc7", "prob"] if "fc7" in blobs else ["prob"]
            assert list(df.columns) == ["image", *wanted], (path, blobs)
            for blob in wanted:
                assert np.array_equal(np.stack(df[blob]), np.stack(reference[blob]))
        for blobs in ("nope", ["fc7", "nope"]):
            with pytest.raises(OutputError, match=r"has no blob \['nope'\]; it holds \['fc7', 'conv1', 'prob'\]"):
                savedeep.load(path, blobs=blobs)
