"""`savedeep export` (netCDF4, .npy, .mat), load_xarray, load_dataarray and the flat assembly.

Every format is read back with the reader its users have (xarray, h5py and the
netCDF-C library for the netCDF file, numpy.load with mmap_mode, scipy.io.loadmat)
and compared with savedeep.load value for value. One real CaffeNet run (a CSV
image list with metadata, float32 and float16 blobs, whole, pooled to a grid, to
one value per channel and projected, several shards) and synthetic outputs written
with the real ShardWriter (odd blob names, binary storage, a partial output, a
blob too big for a .mat file) cover the cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import savedeep
from savedeep.cli import main
from savedeep.analysis.interop import load_assembly, load_dataarray, load_xarray, valid_names
from savedeep.data.output import ColumnSpec, SavedOutput, ShardWriter, shard_name, write_manifest
from savedeep.caffe.receptive_field import model_receptive_fields

from conftest import copy_photos

xr = pytest.importorskip("xarray")
h5py = pytest.importorskip("h5py")
scipy_io = pytest.importorskip("scipy.io")

BLOBS = ["conv5", "conv1", "pool5", "conv3", "fc6", "fc7"]
SPECS = [
    "conv5",
    {"name": "conv1", "dtype": "float16", "reduce": {"pool": "mean", "grid": 2}},
    {"name": "pool5", "dtype": "float16"},
    {"name": "conv3", "reduce": {"pool": "max"}},
    {"name": "fc6", "reduce": {"project": 16, "seed": 0}},
    "fc7",
]


@pytest.fixture(scope="module")
def run_output(caffenet_dir, photos, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A real CaffeNet run over five photos listed in a CSV with two metadata columns, in three shards."""
    root = tmp_path_factory.mktemp("export")
    names = ["cat.jpg", "fish-bike.jpg", "astronaut.png", "coffee.png", "cat_gray.jpg"]
    copy_photos(photos, root / "images", names)
    rows = [("images/" + n, f"cat {i % 2}", "" if i == 3 else f"s{i}, x") for i, n in enumerate(names)]
    listing = root / "list.csv"
    listing.write_text("path,category,subject id\n" + "".join(f'{p},{c},"{s}"\n' for p, c, s in rows))
    cfg = savedeep.load_config(
        None,
        model=caffenet_dir,
        images=listing,
        output=root / "out" / "acts.pk",
        gpus="cpu",
        batch_size=2,
        shard_size=2,
        blobs=SPECS,
    )
    result = savedeep.run(cfg)
    assert result.rows == 5
    ref = savedeep.load(root / "out" / "acts.pk")
    assert list(ref.columns) == ["image", "category", "subject id", *BLOBS]
    return root / "out" / "acts.pk", ref


def _ref(ref: pd.DataFrame, blob: str) -> np.ndarray:
    return np.stack(list(ref[blob]))


# --------------------------------------------------------------------------- names


def test_valid_names_maps_odd_blob_names() -> None:
    m = valid_names(
        [
            "conv1/relu",
            "inception_3a/1x1",
            "1x1",
            "end",
            "conv1_relu",
            "image",
            "a-b.c",
            "été",
            "x" * 70,
            "x" * 70 + "y",
            "fc7",
        ]
    )
    assert m["conv1/relu"] == "conv1_relu"
    assert m["inception_3a/1x1"] == "inception_3a_1x1"
    assert m["1x1"] == "x1x1"  # must start with a letter
    assert m["end"] == "xEnd"  # a MATLAB keyword
    assert m["conv1_relu"] == "conv1_relu_2"  # clashes with the mapped conv1/relu
    assert m["image"] == "image_2"  # reserved for the keys
    assert m["a-b.c"] == "a_b_c" and m["été"] == "x_t_"
    assert len(m["x" * 70]) == 63 and m["x" * 70 + "y"] == "x" * 61 + "_2"
    assert m["fc7"] == "fc7"
    assert len(set(m.values())) == len(m)
    assert all(v[0].isalpha() and v.replace("_", "a").isalnum() and len(v) <= 63 for v in m.values())


# --------------------------------------------------------------------------- netCDF


@pytest.fixture(scope="module")
def netcdf_file(run_output, tmp_path_factory) -> Path:
    path, _ = run_output
    dest = tmp_path_factory.mktemp("nc") / "acts.nc"
    assert main(["export", str(path), "--to", "netcdf", "-o", str(dest), "-q"]) == 0
    return dest


@pytest.mark.slow  # a real CaffeNet run
def test_netcdf_with_xarray(run_output, netcdf_file, caffenet_dir) -> None:
    _, ref = run_output
    with xr.open_dataset(netcdf_file) as ds:
        assert list(ds["image"].values) == list(ref["image"])
        assert list(ds["category"].values) == list(ref["category"])
        assert list(ds["subject_id"].values) == list(ref["subject id"])  # odd column name mapped
        assert ds["subject_id"].attrs["column"] == "subject id"
        for blob in BLOBS:
            assert np.array_equal(ds[blob].values, _ref(ref, blob).astype(np.float32)), blob
            assert ds[blob].dtype == np.float32
        assert ds["conv5"].dims == ("image", "conv5_channel", "conv5_y", "conv5_x")
        assert ds["fc7"].dims == ("image", "fc7_unit") and ds["fc6"].dims == ("image", "fc6_unit")
        assert ds["conv3"].dims == ("image", "conv3_channel")  # pooled to one value per channel
        assert ds["conv1"].dims == ("image", "conv1_channel", "conv1_y", "conv1_x") and ds["conv1"].shape[2:] == (2, 2)
        assert ds["conv1"].attrs["stored_dtype"] == "float16" and ds["conv5"].attrs["stored_dtype"] == "float32"
        # metadata and receptive fields are coordinates
        assert "category" in ds["conv5"].coords and "conv5_rf_y" in ds["conv5"].coords
        rf = model_receptive_fields(caffenet_dir)
        cy, cx = rf["conv5"].centres()
        assert np.array_equal(ds["conv5_rf_y"].values, cy) and np.array_equal(ds["conv5_rf_x"].values, cx)
        assert (ds["conv5_rf_size"].values == 163).all() and ds["pool5_rf_size"].values[0, 0] == 195
        assert ds["conv5"].attrs["rf_jump"] == "[16, 16]"
        # conv1 pooled to 2x2 (adaptive bins of 55: [0, 28) and [27, 55)): each cell has the union of its fields
        assert list(ds["conv1_rf_size"].values.ravel()) == [27 * 4 + 11] * 4
        assert list(ds["conv1_rf_y"].values) == [(0 + 27 * 4 + 10) / 2, (27 * 4 + 54 * 4 + 10) / 2]
        assert "fc7_rf_y" not in ds.coords
        # provenance from the manifest
        manifest = SavedOutput.open(run_output[0]).manifest
        assert json.loads(ds.attrs["model_sha256"]) == manifest["model"]["sha256"]
        assert ds.attrs["model_sha256_weights_caffemodel"] == manifest["model"]["sha256"]["weights.caffemodel"]
        assert ds.attrs["config_fingerprint"] == manifest["config_fingerprint"]
        assert json.loads(ds.attrs["preprocess"]) == manifest["preprocess"]
        assert ds.attrs["savedeep_version"] == savedeep.__version__ and ds.attrs["partial"] == 0
        assert "float32" in ds.attrs["float16_rule"]


@pytest.mark.slow  # a real CaffeNet run
def test_netcdf_with_h5py_and_netcdf_c(run_output, netcdf_file) -> None:
    _, ref = run_output
    with h5py.File(netcdf_file, "r") as f:  # plain HDF5, as MATLAB's h5read sees it
        assert [k.decode() for k in f["image"][:]] == list(ref["image"])
        assert [k.decode() for k in f["category"][:]] == list(ref["category"])
        for blob in BLOBS:
            assert np.array_equal(f[blob][:], _ref(ref, blob).astype(np.float32)), blob
        # chunks of whole images, about 1 MiB: one image, or one blob, is read without touching other data
        assert f["conv5"].chunks[1:] == (256, 13, 13) and f["conv5"].chunks[0] * 256 * 169 * 4 <= 2**20
        assert f["fc7"].chunks[1:] == (4096,) and f["conv5"].compression == "gzip"
        assert json.loads(f.attrs["blob_names"]) == {b: b for b in BLOBS}
    netCDF4 = pytest.importorskip("netCDF4")  # the netCDF-C library, as MATLAB's ncread and R's ncdf4 use
    with netCDF4.Dataset(netcdf_file) as nc:
        assert list(nc.variables["image"][:]) == list(ref["image"])
        assert nc.variables["conv5"].dimensions == ("image", "conv5_channel", "conv5_y", "conv5_x")
        for blob in BLOBS:
            assert np.array_equal(np.asarray(nc.variables[blob][:]), _ref(ref, blob).astype(np.float32)), blob


# --------------------------------------------------------------------------- NumPy, MATLAB


@pytest.mark.slow  # a real CaffeNet run
def test_npy(run_output, tmp_path) -> None:
    path, ref = run_output
    dest = savedeep.export(path, "npy", tmp_path / "npy")
    for blob in BLOBS:
        arr = np.load(dest / f"{blob}.npy", mmap_mode="r")
        assert isinstance(arr, np.memmap)
        assert arr.dtype == _ref(ref, blob).dtype  # float16 stays float16
        assert np.array_equal(arr, _ref(ref, blob)), blob
    assert (dest / "images.txt").read_text().splitlines() == list(ref["image"])
    meta = pd.read_csv(dest / "images.csv", keep_default_na=False, dtype=str)
    assert list(meta.columns) == ["image", "category", "subject id"]
    assert meta.to_dict("list") == {c: list(ref[c]) for c in ("image", "category", "subject id")}
    doc = json.loads((dest / "savedeep_export.json").read_text())
    assert doc["blobs"]["conv5"]["shape"] == [5, 256, 13, 13]
    assert doc["blobs"]["conv5"]["dims"] == ["image", "channel", "y", "x"]
    assert doc["blobs"]["conv1"]["dtype"] == "float16" and doc["blob_order"] == BLOBS
    assert doc["model_sha256"] and doc["config_fingerprint"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # a real CaffeNet run
def test_mat(run_output, tmp_path) -> None:
    path, ref = run_output
    dest = tmp_path / "acts.mat"
    assert main(["export", str(path), "--to", "mat", "-o", str(dest), "-q"]) == 0
    m = scipy_io.loadmat(dest)
    assert [str(c[0]) for c in m["images"].ravel()] == list(ref["image"])  # a cell array of strings
    for blob in BLOBS:
        assert m[blob].dtype == np.float32
        assert np.array_equal(m[blob], _ref(ref, blob).astype(np.float32)), blob
    meta = m["metadata"][0, 0]
    assert [str(c[0]) if c.size else "" for c in meta["category"].ravel()] == list(ref["category"])
    assert [str(c[0]) if c.size else "" for c in meta["subject_id"].ravel()] == list(ref["subject id"])
    names = {str(a[0]): str(b[0]) for a, b in m["blob_names"]}
    assert names == {b: b for b in BLOBS}
    info = json.loads(str(m["savedeep_info"][0]))
    assert info["blobs"]["conv5"]["dims"] == ["image", "channel", "y", "x"]
    assert info["metadata_names"] == {"category": "category", "subject_id": "subject id"}


# --------------------------------------------------------------------------- xarray in Python


@pytest.mark.slow  # a real CaffeNet run
def test_load_xarray_equals_load_and_the_netcdf_file(run_output, netcdf_file) -> None:
    path, ref = run_output
    ds = load_xarray(path)
    for blob in BLOBS:
        assert ds[blob].dtype == _ref(ref, blob).dtype
        assert np.array_equal(ds[blob].values, _ref(ref, blob)), blob
    with xr.open_dataset(netcdf_file) as nc:
        assert set(ds.variables) == set(nc.variables)
        for name in ds.variables:
            assert ds[name].dims == nc[name].dims, name
            if ds[name].dtype != object:
                assert np.array_equal(ds[name].values, nc[name].values), name
            else:
                assert list(ds[name].values) == list(nc[name].values), name
    lazy = savedeep.load_xarray(path, blobs=["conv5", "conv1"], lazy=True)
    assert type(lazy["conv5"].data).__module__.startswith("dask")
    assert np.array_equal(lazy["conv5"].values, _ref(ref, "conv5"))
    assert list(lazy["subject_id"].values) == list(ref["subject id"])


@pytest.mark.slow  # a real CaffeNet run
def test_load_dataarray_has_plain_dims(run_output, caffenet_dir) -> None:
    path, ref = run_output
    da = load_dataarray(path, "pool5")
    assert da.dims == ("image", "channel", "y", "x") and da.dtype == np.float16
    assert np.array_equal(da.values, _ref(ref, "pool5"))
    assert list(da["category"].values) == list(ref["category"])
    assert da["rf_size"].dims == ("y", "x") and (da["rf_size"].values == 195).all()
    assert np.array_equal(da["rf_x"].values, model_receptive_fields(caffenet_dir)["pool5"].centres()[1])
    assert load_dataarray(path, "fc7").dims == ("image", "unit")


@pytest.mark.slow  # a real CaffeNet run
def test_assembly_brainscore_names(run_output, caffenet_dir) -> None:
    path, ref = run_output
    a = load_assembly(path, blobs=["conv5", "fc7", "conv1"])
    assert a.dims == ("presentation", "neuroid")
    assert a.shape == (5, 256 * 13 * 13 + 4096 + 96 * 4)
    assert list(a["stimulus_id"].values) == list(ref["image"]) and list(a["category"].values) == list(ref["category"])
    for name in (
        "model",
        "layer",
        "neuroid_num",
        "neuroid_id",
        "channel",
        "channel_x",
        "channel_y",
        "rf_y",
        "rf_x",
        "rf_size",
    ):
        assert a[name].dims == ("neuroid",), name
    assert len(set(a["neuroid_id"].values)) == a.shape[1]
    assert a["neuroid_id"].values[0] == f"{caffenet_dir.name}.conv5.0"
    conv5, fc7 = _ref(ref, "conv5"), _ref(ref, "fc7")
    rf = model_receptive_fields(caffenet_dir)["conv5"]
    cy, cx = rf.centres()
    rng = np.random.default_rng(0)
    for k in rng.integers(0, 256 * 13 * 13, size=50):  # every coordinate names the value it labels
        c, y, x = int(a["channel"][k]), int(a["channel_y"][k]), int(a["channel_x"][k])
        assert a["layer"].values[k] == "conv5"
        assert np.array_equal(a.values[:, k], conv5[:, c, y, x])
        assert a["rf_y"].values[k] == cy[y] and a["rf_x"].values[k] == cx[x] and a["rf_size"].values[k] == 163
    j = 256 * 13 * 13 + 17
    assert a["layer"].values[j] == "fc7" and a["channel"].values[j] == 17 and np.isnan(a["channel_x"].values[j])
    assert np.isnan(a["rf_size"].values[j]) and np.array_equal(a.values[:, j], fc7[:, 17])
    conv1 = a.where(a["layer"] == "conv1", drop=True)
    assert np.array_equal(conv1.values, _ref(ref, "conv1").reshape(5, -1).astype(np.float32))
    # Brain-Score's tools group coords into a MultiIndex per dim: that works on this DataArray as it is
    stacked = a.set_index(neuroid=["model", "layer", "neuroid_num"])
    assert stacked.sel(layer="fc7").shape == (5, 4096)


# --------------------------------------------------------------------------- synthetic outputs


def make_output(
    directory: Path,
    blobs: dict[str, tuple[tuple[int, ...], str]],
    n: int,
    shard_size: int,
    storage: str = "tensor",
    metadata: dict[str, list[str]] | None = None,
    write_rows: int = 8,
    incomplete: set[int] = frozenset(),
    compression: str = "zstd",
    seed: int = 0,
    fill=None,
) -> dict[str, np.ndarray]:
    """A savedeep output written with the real ShardWriter and a manifest; returns the arrays written
    (``fill(column, a, b)``: rows a..b of a column, generated as they are written, not returned)."""
    directory.mkdir(parents=True)
    metadata = metadata or {}
    rng = np.random.default_rng(seed)
    cols = [ColumnSpec(b, shape, dtype, storage) for b, (shape, dtype) in blobs.items()]
    data = {}
    if fill is None:
        data = {c.name: rng.standard_normal((n, *c.shape)).astype(c.dtype) for c in cols}
    keys = [f"img/{i:06d}.jpg" for i in range(n)]
    shards = []
    for k, start in enumerate(range(0, n, shard_size)):
        stop = min(n, start + shard_size)
        entry = {"index": k, "start": start, "stop": stop, "file": None, "rows": 0, "failures": [], "complete": False}
        if k not in incomplete:
            w = ShardWriter(directory, k, cols, list(metadata), compression=compression)
            for a in range(start, stop, write_rows):
                b = min(stop, a + write_rows)
                arrays = {c.name: fill(c, a, b) for c in cols} if fill else {c.name: data[c.name][a:b] for c in cols}
                w.write(keys[a:b], {m: v[a:b] for m, v in metadata.items()}, arrays)
            w.finish({"index": k, "rows": stop - start})
            entry.update(file=shard_name(k), rows=stop - start, complete=True)
        shards.append(entry)
    write_manifest(
        directory,
        {
            "format": "savedeep/1",
            "complete": not incomplete,
            "model": {"directory": "", "sha256": {}},
            "blobs": {
                c.name: {
                    "shape": list(c.shape),
                    "dtype": c.dtype,
                    "storage": storage,
                    "blob_shape": list(c.shape),
                    "reduce": {"kind": "none"},
                }
                for c in cols
            },
            "blob_order": [c.name for c in cols],
            "metadata_columns": list(metadata),
            "shards": shards,
            "config_fingerprint": "synthetic",
        },
    )
    data["image"] = np.array(keys, dtype=object)
    return data


ODD = {
    "conv1/relu": ((3, 4, 5), "float16"),
    "inception_3a/1x1": ((6, 2, 2), "float32"),
    "1x1": ((7,), "float32"),
    "end": ((2,), "float16"),
}


@pytest.mark.parametrize("storage", ["binary", "tensor"])
def test_odd_names_in_every_format(tmp_path, storage) -> None:
    meta = {"subject id": [f"s{i % 3}" for i in range(11)], "2nd": [str(i) for i in range(11)]}
    out = tmp_path / "acts.parquet"
    data = make_output(out, ODD, 11, shard_size=4, storage=storage, metadata=meta, write_rows=3)
    ref = savedeep.load(out)
    for b in ODD:
        assert np.array_equal(np.stack(list(ref[b])), data[b])
    mapped = {"conv1/relu": "conv1_relu", "inception_3a/1x1": "inception_3a_1x1", "1x1": "x1x1", "end": "xEnd"}
    nc = savedeep.export(out, "netcdf")
    assert nc == tmp_path / "acts.nc"
    with xr.open_dataset(nc) as ds:
        for b, v in mapped.items():
            assert ds[v].attrs["blob"] == b and np.array_equal(ds[v].values, data[b].astype(np.float32))
        assert json.loads(ds.attrs["blob_names"]) == {v: b for b, v in mapped.items()}
        assert list(ds["subject_id"].values) == meta["subject id"] and list(ds["x2nd"].values) == meta["2nd"]
        assert list(ds["image"].values) == list(data["image"])
    npy = savedeep.export(out, "npy")
    assert npy == tmp_path / "acts_npy"
    doc = json.loads((npy / "savedeep_export.json").read_text())
    for b, v in mapped.items():
        assert doc["blobs"][b]["file"] == f"{v}.npy"
        assert np.array_equal(np.load(npy / f"{v}.npy", mmap_mode="r"), data[b])
    mat = savedeep.export(out, "mat")
    m = scipy_io.loadmat(mat)
    for b, v in mapped.items():
        assert np.array_equal(m[v], data[b].astype(np.float32))
    assert {str(b[0]): str(a[0]) for a, b in m["blob_names"]} == mapped and not set(mapped) & set(m)
    xds = load_xarray(out)
    assert set(mapped.values()) <= set(xds.data_vars)
    assert np.array_equal(xds["conv1_relu"].values, data["conv1/relu"])


def test_big_row_groups_are_read_in_slices(tmp_path) -> None:
    out = tmp_path / "acts.parquet"
    data = make_output(out, {"c": ((4, 3, 3), "float16")}, 20, shard_size=12, write_rows=12)
    src = SavedOutput.open(out)
    parts = list(src.iter_blob("c", max_bytes=3 * src.row_bytes("c")))
    assert [len(p) for p in parts] == [3, 3, 3, 3, 3, 3, 2]
    assert np.array_equal(np.concatenate(parts), data["c"])


def test_partial_output_exports_the_complete_shards(tmp_path, caplog) -> None:
    out = tmp_path / "acts.parquet"
    data = make_output(out, {"fc": ((5,), "float32")}, 10, shard_size=3, incomplete={1})
    with caplog.at_level("WARNING", logger="savedeep"):
        nc = savedeep.export(out, "netcdf")
    assert "partial output" in caplog.text and "3 of 4 shards" in caplog.text
    keep = np.r_[0:3, 6:10]
    with xr.open_dataset(nc) as ds:
        assert ds.attrs["partial"] == 1 and ds.attrs["shards"] == "3 of 4 complete"
        assert list(ds["image"].values) == list(data["image"][keep])
        assert np.array_equal(ds["fc"].values, data["fc"][keep])


def test_cli_errors(tmp_path, capsys) -> None:
    out = tmp_path / "acts.parquet"
    make_output(out, {"fc": ((5,), "float32")}, 4, shard_size=4)
    assert main(["export", str(out), "--to", "npy", "-q"]) == 0
    assert main(["export", str(out), "--to", "npy", "-q"]) == 5
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(out), "--to", "npy", "--overwrite", "-q"]) == 0
    assert main(["export", str(out), "--to", "netcdf", "--blobs", "fc8", "-q"]) == 5
    assert "has no blob ['fc8']" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing.pk"), "--to", "mat", "-q"]) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_without_the_extra_export_says_what_to_install(tmp_path) -> None:
    out = tmp_path / "acts.parquet"
    make_output(out, {"fc": ((5,), "float32")}, 4, shard_size=4)
    # a Python where h5netcdf cannot be imported (sys.modules entry None makes every import fail)
    code = (
        "import sys; sys.modules['h5netcdf'] = None; sys.modules['xarray'] = None\n"
        "from savedeep.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "export", str(out), "--to", "netcdf"], capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr
    assert "needs h5netcdf" in r.stderr and "pip install 'savedeep[export]'" in r.stderr
    assert not (tmp_path / "acts.nc").exists()
    code = "import sys; sys.modules['xarray'] = None\nimport savedeep; savedeep.load_xarray(sys.argv[1])"
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and "pip install 'savedeep[export]'" in r.stderr


def test_mat_refuses_a_blob_of_2_gib(tmp_path) -> None:
    """A float16 blob of 1 GiB is 2 GiB as MATLAB singles: refused before anything is written."""
    out = tmp_path / "acts.parquet"
    zeros = np.zeros((64, 1, 1024, 1024), np.float16)  # zeros compress to almost nothing: a small test file
    make_output(
        out,
        {"big": ((1, 1024, 1024), "float16"), "fc": ((3,), "float32")},
        512,
        shard_size=256,
        storage="binary",
        write_rows=64,
        fill=lambda c, a, b: zeros[: b - a] if c.name == "big" else np.ones((b - a, 3), np.float32),
    )
    dest = tmp_path / "acts.mat"
    with pytest.raises(savedeep.errors.OutputError, match=r"big \(2.00 GiB\).*--to netcdf"):
        savedeep.export(out, "mat", dest)
    assert not dest.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert main(["export", str(out), "--to", "mat", "-o", str(dest), "-q"]) == 5
    assert not dest.exists()
    # the other blob alone is fine
    assert savedeep.export(out, "mat", dest, blobs=["fc"]) == dest
    assert scipy_io.loadmat(dest)["fc"].shape == (512, 3)
