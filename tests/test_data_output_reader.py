"""One reader behind every entry point: blobs chosen the same way, one error for an unknown blob.

Every public function that reads an output takes its blobs as a list or as one comma-separated string,
given the pickle's path, the Parquet directory or a pickle copied alone, and an unknown name is the same
one-line OutputError naming the output's blobs, before anything is written. Before
savedeep.data.output.SavedOutput was the one reader, ``load_array`` had its own check and said
``has no blob 'nope'`` where the others said ``has no blob ['nope']``, and a pickle alone was read by
``load`` only (every other entry point: "has no _manifest.json: not a savedeep output").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import savedeep
from savedeep.data.output import SavedOutput, write_pickle
from savedeep.errors import OutputError

from test_analysis_export import make_output

BLOBS = {"a": ((2, 3, 3), "float32"), "b": ((4,), "float32"), "c": ((5,), "float16")}


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A finished output of 6 images in 2 shards, with its pickle, and a copy of the pickle alone."""
    import shutil

    directory = tmp_path_factory.mktemp("reader") / "acts.parquet"
    data = make_output(directory, BLOBS, 6, shard_size=4, metadata={"label": ["x", "y", "", "z", "w", "v"]})
    write_pickle(directory, directory.with_suffix(".pk"), 2**30)
    alone = tmp_path_factory.mktemp("alone") / "acts.pk"
    shutil.copy(directory.with_suffix(".pk"), alone)
    return directory, data, alone


def _report_blobs(page: Path) -> list[str]:
    text = page.read_text()
    doc = re.search(r'<script type="application/json" id="savedeep-data">(.*?)</script>', text, re.S).group(1)
    return list(json.loads(doc)["blobs"])


# entry point -> (call(path, blobs, dest), the blobs its result holds)
MANY = {
    "load": (
        lambda p, b, d: savedeep.load(p, blobs=b),
        lambda r: [c for c in r.columns if c not in ("image", "label")],
    ),
    "load_xarray": (lambda p, b, d: savedeep.load_xarray(p, b), lambda r: list(r.data_vars)),
    "load_assembly": (
        lambda p, b, d: savedeep.load_assembly(p, b),
        lambda r: list(dict.fromkeys(r["layer"].values.tolist())),
    ),
    "export": (
        lambda p, b, d: savedeep.export(p, "npy", d / "acts_npy", blobs=b),
        lambda r: json.loads((r / "savedeep_export.json").read_text())["blob_order"],
    ),
    "report": (lambda p, b, d: savedeep.report(p, d / "acts.report.html", blobs=b, thumbnails=False), _report_blobs),
    "blob_similarity": (lambda p, b, d: savedeep.blob_similarity(p, b), lambda r: list(r.index)),
}
ONE = {
    "load_array": lambda p, b: savedeep.load_array(p, b).shape[1:],
    "load_dataarray": lambda p, b: savedeep.load_dataarray(p, b).shape[1:],
    "rdm": lambda p, b: savedeep.rdm(p, b)[0].shape,
    "blob_stats": lambda p, b: savedeep.blob_stats(p, b).shape,
}


def _path(output, which: str) -> Path:
    directory, _, alone = output
    return {"pickle": directory.with_suffix(".pk"), "parquet": directory, "pickle alone": alone}[which]


def _where(output, which: str) -> Path:
    """The path an error names: the Parquet directory, or the pickle when it is alone."""
    return output[2] if which == "pickle alone" else output[0]


WHICH = ["pickle", "parquet", "pickle alone"]


@pytest.mark.parametrize("blobs", [["c", "a"], "c,a", " c , a ", ["c", "nope"], "c,nope"])
@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("entry", list(MANY))
def test_every_reader_takes_blobs_the_same_way(output, which, entry, blobs, tmp_path) -> None:
    call, held = MANY[entry]
    path = _path(output, which)
    if "nope" in blobs:
        with pytest.raises(OutputError) as err:
            call(path, blobs, tmp_path)
        assert str(err.value) == f"{_where(output, which)} has no blob ['nope']; it holds ['a', 'b', 'c']"
        assert list(tmp_path.iterdir()) == []  # refused before anything was written
    else:
        assert held(call(path, blobs, tmp_path)) == ["c", "a"]


@pytest.mark.parametrize("blob", ["b", "nope", "a,b"])
@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("entry", list(ONE))
def test_every_one_blob_reader_names_the_blobs_the_same_way(output, which, entry, blob) -> None:
    path = _path(output, which)
    if blob == "b":
        assert ONE[entry](path, blob) in {(4,), (6, 6)}  # the blob's per-image shape, or the 6 x 6 RDM
        return
    with pytest.raises(OutputError) as err:
        ONE[entry](path, blob)
    assert str(err.value) == f"{_where(output, which)} has no blob [{blob!r}]; it holds ['a', 'b', 'c']"


def test_the_reader_refuses_a_shard_that_changed_after_the_run(output, tmp_path) -> None:
    """The manifest says how many rows each shard holds; every way of reading checks it (load_array did,
    the exports and the statistics trusted the file)."""
    import shutil

    directory, data, _ = output
    copy = tmp_path / "acts.parquet"
    shutil.copytree(directory, copy)
    manifest = json.loads((copy / "_manifest.json").read_text())
    manifest["shards"][0]["rows"] = 3  # the file holds 4
    (copy / "_manifest.json").write_text(json.dumps(manifest))
    src = SavedOutput.open(copy)
    for read in (
        lambda: src.read_blob("a"),
        lambda: list(src.iter_blob("b")),
        lambda: src.index(),
        lambda: src.read_shard(0, "c"),
        lambda: src.frame("a"),
    ):
        with pytest.raises(OutputError, match="does not hold the 3 rows its manifest entry says"):
            read()
    assert np.array_equal(SavedOutput.open(directory).read_blob("a"), data["a"])


def test_one_default_destination_beside_the_output(output) -> None:
    """The report and every export name their default file by one table (report.py and interop.py had one
    function each)."""
    from savedeep.data.output import BESIDE, default_destination

    directory = output[0]
    want = {"report": "acts.report.html", "netcdf": "acts.nc", "npy": "acts_npy", "mat": "acts.mat"}
    assert set(BESIDE) == set(want)
    for path in (directory, directory.with_suffix(".pk")):
        assert {k: default_destination(path, k) for k in want} == {k: directory.with_name(v) for k, v in want.items()}
    with pytest.raises(ValueError, match="'nc' is not one of report, netcdf, npy, mat"):
        default_destination(directory, "nc")


def test_a_pickle_alone_reads_as_its_output(output) -> None:
    """The same rows, keys, metadata, dtypes and shapes from a pickle copied without its Parquet directory as
    from the output, for the arrays, the xarray Dataset and the statistics."""
    directory, data, alone = output
    src = SavedOutput.open(alone)
    assert src.blobs == ["a", "b", "c"] and src.metadata_columns == ["label"] and src.n == 6
    assert src.index() == SavedOutput.open(directory).index()
    for b in BLOBS:
        got = savedeep.load_array(alone, b)
        assert got.dtype == data[b].dtype and np.array_equal(got, data[b])
    ds, ref = savedeep.load_xarray(alone), savedeep.load_xarray(directory)
    assert list(ds.data_vars) == list(ref.data_vars) and list(ds["label"].values) == list(ref["label"].values)
    for v in ds.data_vars:
        assert ds[v].dtype == ref[v].dtype and np.array_equal(ds[v].values, ref[v].values)
    assert savedeep.blob_stats(alone, "a").to_dict() == savedeep.blob_stats(directory, "a").to_dict()


def test_what_is_not_an_output_is_one_clear_error(tmp_path) -> None:
    """A folder, a path with nothing there, a file that is no pickle, a pickle of something else: one OutputError
    saying so, from every reader. Before, load gave pickle's UnpicklingError for a file that is no pickle, and
    IsADirectoryError for a folder (it called read_pickle on it)."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.pk").write_text("my notes")
    (tmp_path / "other.pk").write_bytes(__import__("pickle").dumps({"my": "results"}))
    for path, says in (
        (tmp_path / "folder", "has no _manifest.json: not a savedeep output"),
        (tmp_path / "nothing.pk", "has no _manifest.json: not a savedeep output"),
        (tmp_path / "notes.pk", "cannot be read as a pickle"),
        (tmp_path / "other.pk", "is not a savedeep output (a pandas DataFrame with an image column)"),
    ):
        for read in (
            SavedOutput.open,
            savedeep.load,
            lambda p: savedeep.load_array(p, "a"),
            lambda p: savedeep.export(p, "npy"),
        ):
            with pytest.raises(OutputError, match=re.escape(says)):
                read(path)
