"""An output in the formats analysis tools read: netCDF4 (xarray, MATLAB, R), NumPy ``.npy``, MATLAB ``.mat``;
and in Python as an ``xarray.Dataset`` or a Brain-Score-style flat ``DataArray``.

Everything is read from the Parquet shards (a finished output, or the complete
shards of a partial one, with a warning), one blob column at a time and at most
``READ_BATCH_BYTES`` of rows at a time, through the one reader of outputs,
:class:`savedeep.data.output.SavedOutput`. Only the image keys and the metadata columns are held
for every image, so the netCDF and NumPy exports use bounded memory whatever
the number of images. Every file is written under a hidden temporary name and
renamed when complete.

**Names.** netCDF variables, ``.npy`` file names and MATLAB variables are
valid MATLAB identifiers: :func:`valid_names` maps a blob (or metadata column)
name such as ``conv1/relu`` or ``inception_3a/1x1`` to ``conv1_relu`` and
``inception_3a_1x1`` (every character outside ``[A-Za-z0-9_]`` becomes ``_``; a
name not starting with a letter gets an ``x`` in front; MATLAB keywords become
``xEnd`` etc.; at most 63 characters; clashes get ``_2``, ``_3``). The mapping is
stored in each file (``blob_names``).

**Dimensions.** A netCDF file (and an ``xarray.Dataset``) has one length per
dimension name, and blobs differ in size, so each blob's own dimensions carry its
variable name: ``conv1`` has dims ``(image, conv1_channel, conv1_y, conv1_x)``,
``fc7`` has ``(image, fc7_unit)``. :func:`load_dataarray` gives one blob with the
plain names ``(image, channel, y, x)`` / ``(image, unit)``. By stored shape:

- ``(C, H, W)`` (a whole conv blob, or one pooled to a ``k x k`` grid): ``channel, y, x``;
- ``(C,)`` pooled to one value per channel: ``channel``;
- ``(D,)`` (an InnerProduct blob, or a random projection): ``unit``;
- any other shape: ``dim1, dim2, ...``.

Coordinates: ``image`` (the keys) and each metadata column of a CSV image list
along ``image``; integer indices along ``channel``, ``y``, ``x``, ``unit``; and,
where the blob has a receptive field (:mod:`savedeep.caffe.receptive_field`; needs the
model's prototxt, found through the manifest or given as ``model=``), ``rf_y``
and ``rf_x`` (centre, input pixels) along ``y`` and ``x`` and ``rf_size`` along
``(y, x)``: the side of the square holding the field (``max`` of its height and
width; they are equal for square kernels). The cells of a pooled grid have the
union of their positions' fields.

**netCDF writer.** h5netcdf (on h5py) rather than netCDF4-python: it writes
netCDF4 files without the netCDF-C library, from wheels on every platform, and
h5py's partial writes let a variable be filled a row group at a time. The tests
read the file back with the netCDF-C library (netCDF4-python), as MATLAB's
``ncread`` and R's ncdf4 do, with h5py as plain HDF5, and with xarray.

**float16.** netCDF has no 16-bit float type and MATLAB's ``load`` no half
precision: a blob stored as float16 is written as float32. Every float16 value
is exactly a float32 value, so nothing changes; the variable's ``stored_dtype``
attribute says ``float16``. The ``.npy`` files and :func:`load_xarray` keep float16.

Size: every export and the xarray views share the names and the
layout of dimensions and coordinates; one module keeps a blob's name, dims and receptive-field
coordinates identical in the netCDF file, the ``.npy`` folder, the ``.mat`` file and xarray.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from savedeep.errors import ConfigError, OutputError
from savedeep.data.output import SavedOutput, default_destination
from savedeep.files import sha256_file

log = logging.getLogger(__name__)

FORMATS = ("netcdf", "npy", "mat")
EXPORT_FORMAT = "savedeep-export/1"
NETCDF_CHUNK_BYTES = 2**20  # about 1 MiB per HDF5 chunk (one image of a conv blob, or a few rows)
MAT_MAX_VARIABLE_BYTES = 2**31  # MATLAB's v5 format: a variable must stay below 2 GiB
MATLAB_NAME_MAX = 63
# Names of the exported files' own variables: never given to a blob or a metadata column.
RESERVED = frozenset({"image", "images", "metadata", "blob_names", "metadata_names", "savedeep_info"})
_MATLAB_KEYWORDS = frozenset(
    {
        "break",
        "case",
        "catch",
        "classdef",
        "continue",
        "else",
        "elseif",
        "end",
        "for",
        "function",
        "global",
        "if",
        "otherwise",
        "parfor",
        "persistent",
        "return",
        "spmd",
        "switch",
        "try",
        "while",
    }
)
FLOAT16_RULE = (
    "netCDF has no 16-bit float and MATLAB's load no half precision: float16 blobs are written as "
    "float32, which holds every float16 value exactly (attribute stored_dtype: float16)"
)
RF_RULE = (
    "receptive fields in the net's input pixels (after resize and crop), pixel centres at 0..W-1: "
    "rf_y/rf_x the centre, rf_size the side of the square holding the field; a blob reached through "
    "several paths (Concat, Eltwise) gets the smallest interval holding every path's field; a cell of a "
    "pooled grid the union of its positions' fields"
)


def require(*modules: str, what: str) -> None:
    """Import ``modules`` or stop with the install command of the ``export`` extra."""
    import importlib

    missing = []
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    if missing:
        raise ConfigError(
            f"{what} needs {', '.join(missing)}, which is not installed: "
            "pip install 'savedeep[export]' (xarray, h5netcdf, h5py, scipy)"
        )


def valid_names(names: Sequence[str], reserved: Sequence[str] = RESERVED) -> dict[str, str]:
    """Each name -> a distinct valid MATLAB identifier (also a valid netCDF name and file name)."""
    taken = set(reserved)
    out: dict[str, str] = {}
    for name in names:
        m = re.sub(r"[^A-Za-z0-9_]", "_", name)
        if not m or not m[0].isalpha():
            m = "x" + m
        if m in _MATLAB_KEYWORDS:
            m = "x" + m[0].upper() + m[1:]
        m = m[:MATLAB_NAME_MAX]
        base, k = m, 2
        while m in taken:
            suffix = f"_{k}"
            m = base[: MATLAB_NAME_MAX - len(suffix)] + suffix
            k += 1
        taken.add(m)
        out[name] = m
    return out


# --------------------------------------------------------------------------- what the files record


def receptive_fields_of(src: SavedOutput, model: Path | str | None = None) -> dict[str, Any]:
    """Each blob's receptive field, from ``model`` or the model directory the manifest names.

    Empty (with a warning) when the prototxt is not there or differs from the run's (sha256).
    """
    from savedeep.caffe.model import PROTOTXT_NAME, load_net
    from savedeep.caffe.receptive_field import receptive_fields

    recorded = src.manifest.get("model", {})
    where = Path(model) if model is not None else Path(recorded.get("directory", ""))
    prototxt = where / PROTOTXT_NAME if where.is_dir() else where
    if not recorded.get("directory") and model is None:
        return {}
    if not prototxt.is_file():
        log.warning(
            "%s: not found, so no receptive-field coordinates; pass the model directory (model=... or --model)",
            prototxt,
        )
        return {}
    want = recorded.get("sha256", {}).get(PROTOTXT_NAME)
    if want and sha256_file(prototxt) != want:
        log.warning(
            "%s differs from the prototxt of the run (sha256), so no receptive-field coordinates; "
            "pass the run's model directory (model=... or --model)",
            prototxt,
        )
        return {}
    return receptive_fields(load_net(prototxt))


def provenance(src: SavedOutput) -> dict[str, Any]:
    """Attributes for the exported files: model hashes, preprocessing, config fingerprints, versions."""
    from savedeep.version import __version__

    m = src.manifest
    model = m.get("model", {})
    attrs: dict[str, Any] = {
        "title": "savedeep activations",
        "savedeep_format": EXPORT_FORMAT,
        "savedeep_version": __version__,
        "source": str(src.directory),
        "partial": int(src.partial),
        "shards": f"{len(src.shards)} of {len(m.get('shards', []))} complete",
        "images": src.n,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_created": str(m.get("created", "")),
        "run_versions": json.dumps(m.get("versions", {}), sort_keys=True),
        "model_directory": str(model.get("directory", "")),
        "model_sha256": json.dumps(model.get("sha256", {}), sort_keys=True),
        "model_input_shape": json.dumps(model.get("input_shape", [])),
        "engine": str(m.get("engine", "")),
        "preprocess": json.dumps(m.get("preprocess", {}), sort_keys=True),
        "config": json.dumps(m.get("config", {}), sort_keys=True),
        "config_fingerprint": str(m.get("config_fingerprint", "")),
        "result_fingerprint": str(m.get("result_fingerprint", "")),
        "float16_rule": FLOAT16_RULE,
        "receptive_field_rule": RF_RULE,
    }
    for name, digest in model.get("sha256", {}).items():
        attrs["model_sha256_" + re.sub(r"[^A-Za-z0-9_]", "_", name)] = digest
    return attrs


# --------------------------------------------------------------------------- layout: dims and coordinates


@dataclass
class BlobLayout:
    """How one blob is laid out: variable name, dims after ``image``, coordinates (plain names)."""

    blob: str
    var: str
    shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    coords: dict[str, tuple[tuple[str, ...], np.ndarray]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def prefixed(self, name: str) -> str:
        """A dim or coordinate name as it appears in a Dataset / netCDF file: ``<var>_<name>``."""
        return f"{self.var}_{name}"

    @property
    def spatial(self) -> bool:
        return self.dims == ("channel", "y", "x")


def blob_layout(blob: str, var: str, info: dict[str, Any], rf: Any | None) -> BlobLayout:
    """The dims, coordinates and attributes of ``blob`` (manifest entry ``info``; ``rf`` its BlobRF or None)."""
    from savedeep.caffe.receptive_field import blob_axes_bounds

    shape = tuple(int(d) for d in info["shape"])
    reduce = info.get("reduce") or {}
    kind = reduce.get("kind", "none")
    if len(shape) == 3:
        dims: tuple[str, ...] = ("channel", "y", "x")
    elif len(shape) == 1:
        dims = ("channel",) if kind == "pool" else ("unit",)
    else:
        dims = tuple(f"dim{i + 1}" for i in range(len(shape)))
    coords = {d: ((d,), np.arange(n, dtype=np.int32)) for d, n in zip(dims, shape)}
    attrs: dict[str, Any] = {
        "blob": blob,
        "long_name": f"activations of blob {blob}",
        "stored_dtype": info["dtype"],
        "storage": info.get("storage", "tensor"),
        "blob_shape": json.dumps(info.get("blob_shape", list(shape))),
        "reduce": json.dumps({k: v for k, v in reduce.items() if k not in ("row_edges", "col_edges")}, sort_keys=True),
    }
    if rf is not None and dims == ("channel", "y", "x"):
        bounds = blob_axes_bounds(rf, reduce)
        if bounds is not None and len(bounds["y"][0]) == shape[1] and len(bounds["x"][0]) == shape[2]:
            (ylo, yhi), (xlo, xhi) = bounds["y"], bounds["x"]
            coords["rf_y"] = (("y",), (ylo + yhi) / 2.0)
            coords["rf_x"] = (("x",), (xlo + xhi) / 2.0)
            coords["rf_size"] = (("y", "x"), np.maximum.outer(yhi - ylo + 1, xhi - xlo + 1).astype(np.int32))
            attrs["rf_jump"] = json.dumps(list(rf.jump))
            attrs["rf_size_of_a_position"] = json.dumps(list(rf.size))
    return BlobLayout(blob, var, shape, info["dtype"], dims, coords, attrs)


@dataclass
class Plan:
    """What an export writes: the output, the blobs with their layouts, the metadata column names."""

    src: SavedOutput
    layouts: list[BlobLayout]
    meta_names: dict[str, str]  # metadata column -> variable name
    keys: list[str]
    meta: dict[str, list[str]]

    @property
    def blob_names(self) -> dict[str, str]:
        return {lay.var: lay.blob for lay in self.layouts}


def plan(
    path: Path | str,
    blobs: Sequence[str] | str | None = None,
    model: Path | str | None = None,
    src: SavedOutput | None = None,
) -> Plan:
    """Open an output and lay out ``blobs`` (all by default)."""
    src = src or SavedOutput.open(path)
    names = src.select(blobs)
    mapping = valid_names([*src.metadata_columns, *names])
    fields = receptive_fields_of(src, model) if any(len(src.info(b)["shape"]) == 3 for b in names) else {}
    layouts = [blob_layout(b, mapping[b], src.info(b), fields.get(b)) for b in names]
    all_names = [*mapping.values(), *(lay.prefixed(c) for lay in layouts for c in lay.coords)]
    clash = sorted({n for n in all_names if all_names.count(n) > 1})
    if clash:
        raise OutputError(
            f"the names {clash} would be used twice in the export (a blob or metadata column "
            "named like another blob's coordinate); export those blobs separately (--blobs)"
        )
    keys, meta = src.index()
    return Plan(src, layouts, {m: mapping[m] for m in src.metadata_columns}, keys, meta)


# --------------------------------------------------------------------------- atomic destinations


@contextlib.contextmanager
def _atomic_path(dest: Path, overwrite: bool):
    """A hidden temporary path beside ``dest`` that replaces it when the block ends without error."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise OutputError(f"{dest} exists; pass --overwrite (overwrite=True) to replace it, or -o to write elsewhere")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if dest.exists() or dest.is_symlink():
            _remove(dest)  # only with overwrite: a folder (npy) cannot replace a file, nor a file a folder
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def export(
    path: Path | str,
    to: str,
    dest: Path | str | None = None,
    blobs: Sequence[str] | str | None = None,
    overwrite: bool = False,
    model: Path | str | None = None,
    compression_level: int = 1,
) -> Path:
    """Export an output to ``to`` ('netcdf', 'npy' or 'mat') at ``dest`` (default: beside the output)."""
    if to not in FORMATS:
        raise ConfigError(f"export format {to!r} is unknown: use one of {', '.join(FORMATS)}")
    needs = {"netcdf": ("h5netcdf", "h5py"), "npy": (), "mat": ("scipy",)}[to]
    require(*needs, what=f"savedeep export --to {to}")
    dest = Path(dest) if dest is not None else default_destination(path, to)
    src = SavedOutput.open(path)
    if to == "mat":  # refuse before writing anything
        check_mat_sizes(src, src.select(blobs))
    p = plan(path, blobs, model, src)
    writer = {
        "netcdf": lambda: write_netcdf(p, dest, overwrite, compression_level),
        "npy": lambda: write_npy(p, dest, overwrite),
        "mat": lambda: write_mat(p, dest, overwrite),
    }[to]
    out = writer()
    log.info(
        "exported %d images, %d blobs of %s to %s%s",
        src.n,
        len(p.layouts),
        src.directory,
        out,
        f" (partial output: {len(src.shards)} of {len(src.manifest.get('shards', []))} shards)" if src.partial else "",
    )
    return out


# --------------------------------------------------------------------------- netCDF4


def _chunks(n: int, layout: BlobLayout) -> tuple[int, ...] | None:
    """About NETCDF_CHUNK_BYTES per chunk: whole images (several small ones), or one image split by channel."""
    if n == 0:
        return None
    row = int(np.prod(layout.shape, dtype=np.int64)) * 4
    if row <= NETCDF_CHUNK_BYTES:
        return (max(1, min(n, NETCDF_CHUNK_BYTES // max(row, 1))), *layout.shape)
    per_channel = row // layout.shape[0] if layout.shape else row
    channels = max(1, min(layout.shape[0], NETCDF_CHUNK_BYTES // max(per_channel, 1)))
    return (1, channels, *layout.shape[1:])


def write_netcdf(p: Plan, dest: Path, overwrite: bool = False, compression_level: int = 1) -> Path:
    """A netCDF4 file (HDF5 underneath) with one variable per blob, written shard by shard."""
    import h5netcdf
    import h5py

    if not 0 <= compression_level <= 9:
        raise ConfigError(f"compression level {compression_level} must be in 0..9 (0: none)")
    text = h5py.string_dtype()
    comp = dict(compression="gzip", compression_opts=compression_level, shuffle=True) if compression_level else {}
    n = len(p.keys)
    with _atomic_path(dest, overwrite) as tmp:
        with h5netcdf.File(tmp, "w") as f:
            f.dimensions["image"] = n
            v = f.create_variable("image", ("image",), dtype=text)
            v[:] = np.array(p.keys, dtype=object)
            v.attrs["long_name"] = "image key: path relative to the image folder, or the list's entry"
            for col, var in p.meta_names.items():
                mv = f.create_variable(var, ("image",), dtype=text)
                mv[:] = np.array(p.meta[col], dtype=object)
                mv.attrs["long_name"] = f"metadata column {col} of the image list"
                mv.attrs["column"] = col
            for lay in p.layouts:
                for d, size in zip(lay.dims, lay.shape):
                    f.dimensions[lay.prefixed(d)] = size
                names = []
                for c, (cdims, values) in lay.coords.items():
                    cv = f.create_variable(lay.prefixed(c), tuple(lay.prefixed(d) for d in cdims), data=values)
                    if c.startswith("rf_"):
                        cv.attrs["units"] = "input pixels"
                        names.append(lay.prefixed(c))
                var = f.create_variable(
                    lay.var,
                    ("image", *(lay.prefixed(d) for d in lay.dims)),
                    dtype="f4",
                    chunks=_chunks(n, lay),
                    **(comp if n else {}),
                )
                var.attrs.update(lay.attrs)
                var.attrs["coordinates"] = " ".join([*p.meta_names.values(), *names])
                start = 0
                for part in p.src.iter_blob(lay.blob):
                    var[start : start + len(part)] = part.astype(np.float32, copy=False)
                    start += len(part)
            f.attrs.update(provenance(p.src))
            f.attrs["blob_names"] = json.dumps(p.blob_names)
            f.attrs["metadata_names"] = json.dumps({v: k for k, v in p.meta_names.items()})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    return dest


# --------------------------------------------------------------------------- NumPy


def write_npy(p: Plan, dest: Path, overwrite: bool = False) -> Path:
    """A directory of BLOB.npy (N, *shape) files written through memory maps, plus the image list and a JSON."""
    from numpy.lib.format import open_memmap

    n = len(p.keys)
    with _atomic_path(dest, overwrite) as tmp:
        tmp.mkdir()
        files = {}
        for lay in p.layouts:
            path = tmp / f"{lay.var}.npy"
            shape = (n, *lay.shape)
            whole = open_memmap(path, mode="w+", dtype=np.dtype(lay.dtype), shape=shape)
            offset = whole.offset
            del whole  # header written, file sized; rows go through small windows so the mapping stays small
            row = p.src.row_bytes(lay.blob)
            start = 0
            for part in p.src.iter_blob(lay.blob):
                if len(part):
                    window = np.memmap(
                        path, dtype=np.dtype(lay.dtype), mode="r+", offset=offset + start * row, shape=part.shape
                    )
                    window[:] = part
                    window.flush()
                    del window
                start += len(part)
            files[lay.blob] = {
                "file": path.name,
                "variable": lay.var,
                "shape": list(shape),
                "dtype": lay.dtype,
                "dims": ["image", *lay.dims],
                "coords": {
                    c: {"dims": list(d), "values": v.tolist()}
                    for c, (d, v) in lay.coords.items()
                    if c.startswith("rf_")
                },
                **{k: v for k, v in lay.attrs.items() if k not in ("long_name",)},
            }
        (tmp / "images.txt").write_text("".join(k + "\n" for k in p.keys), encoding="utf-8")
        if p.meta_names:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["image", *p.meta_names])
            w.writerows(zip(p.keys, *(p.meta[c] for c in p.meta_names)))
            (tmp / "images.csv").write_text(buf.getvalue(), encoding="utf-8")
        doc = {
            **provenance(p.src),
            "images_file": "images.txt",
            "metadata_file": "images.csv" if p.meta_names else None,
            "metadata_columns": list(p.meta_names),
            "blobs": files,
            "blob_order": [lay.blob for lay in p.layouts],
        }
        (tmp / "savedeep_export.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return dest


# --------------------------------------------------------------------------- MATLAB


def mat_bytes(src: SavedOutput, blob: str) -> int:
    """Bytes of ``blob`` as a single-precision MATLAB variable."""
    return src.n * int(np.prod(src.info(blob)["shape"], dtype=np.int64)) * 4


def check_mat_sizes(src: SavedOutput, blobs: Sequence[str]) -> None:
    """Refuse, before writing anything, blobs that MATLAB's v5 format cannot hold (2 GiB per variable)."""
    big = [(b, mat_bytes(src, b)) for b in blobs if mat_bytes(src, b) + 4096 >= MAT_MAX_VARIABLE_BYTES]
    if big:
        from savedeep.units import human_bytes

        sizes = ", ".join(f"{b} ({human_bytes(s)})" for b, s in big)
        raise OutputError(
            f"cannot export {sizes} to a .mat file: MATLAB's v5 format (scipy's savemat) holds less than 2 GiB per "
            f"variable. Export to netCDF instead, which MATLAB reads with ncread/h5read: savedeep export "
            f"{src.directory} --to netcdf; or leave those blobs out (--blobs), or store them reduced"
        )


def write_mat(p: Plan, dest: Path, overwrite: bool = False) -> Path:
    """A MATLAB v5 .mat file: images (cell), metadata (struct of cells), one single array per blob,
    blob_names (cell: MATLAB name, blob name) and savedeep_info (JSON text)."""
    from scipy.io import savemat

    check_mat_sizes(p.src, [lay.blob for lay in p.layouts])
    info = {
        **provenance(p.src),
        "blob_names": p.blob_names,
        "metadata_names": {v: k for k, v in p.meta_names.items()},
        "blobs": {
            lay.var: {
                "blob": lay.blob,
                "dims": ["image", *lay.dims],
                "shape": [len(p.keys), *lay.shape],
                "stored_dtype": lay.dtype,
                "coords": {c: v.tolist() for c, (d, v) in lay.coords.items() if c.startswith("rf_")},
            }
            for lay in p.layouts
        },
    }
    names = np.empty((len(p.layouts), 2), dtype=object)
    for i, lay in enumerate(p.layouts):
        names[i] = lay.var, lay.blob
    header: dict[str, Any] = {"images": _cell(p.keys), "blob_names": names, "savedeep_info": json.dumps(info)}
    if p.meta_names:
        header["metadata"] = {var: _cell(p.meta[col]) for col, var in p.meta_names.items()}
    with _atomic_path(dest, overwrite) as tmp:
        with open(tmp, "wb") as f:
            # savemat on an open file appends variables after the first call's header: one blob in memory at a time
            savemat(f, header, long_field_names=True, oned_as="column")
            for lay in p.layouts:
                savemat(
                    f,
                    {lay.var: p.src.read_blob(lay.blob).astype(np.float32, copy=False)},
                    long_field_names=True,
                    oned_as="column",
                )
            f.flush()
            os.fsync(f.fileno())
    return dest


def _cell(values: Sequence[str]) -> np.ndarray:
    out = np.empty((len(values),), dtype=object)
    out[:] = list(values)
    return out


# --------------------------------------------------------------------------- xarray


def _blob_data(src: SavedOutput, blob: str, lazy: bool):
    if not lazy:
        return src.read_blob(blob)
    import dask
    import dask.array as da

    info = src.info(blob)
    parts = [
        da.from_delayed(
            dask.delayed(src.read_shard)(k, blob), shape=(rows, *info["shape"]), dtype=np.dtype(info["dtype"])
        )
        for k, rows in enumerate(src.rows)
    ]
    if not parts:
        return np.empty((0, *info["shape"]), dtype=info["dtype"])
    return da.concatenate(parts)


def _lazy(lazy: bool) -> bool:
    if lazy:
        require("dask", what="lazy=True")
    return lazy


def load_xarray(
    path: Path | str, blobs: Sequence[str] | str | None = None, lazy: bool = False, model: Path | str | None = None
):
    """The output as an ``xarray.Dataset``: the same variables, dims, coordinates and attributes as the netCDF
    export (float16 blobs stay float16). ``lazy=True`` gives dask arrays read shard by shard when used."""
    require("xarray", what="savedeep.load_xarray")
    import xarray as xr

    p = plan(path, blobs, model)
    coords: dict[str, Any] = {"image": ("image", np.array(p.keys, dtype=object))}
    for col, var in p.meta_names.items():
        coords[var] = ("image", np.array(p.meta[col], dtype=object), {"column": col})
    data_vars = {}
    for lay in p.layouts:
        for c, (cdims, values) in lay.coords.items():
            coords[lay.prefixed(c)] = (tuple(lay.prefixed(d) for d in cdims), values)
        data = _blob_data(p.src, lay.blob, _lazy(lazy))
        data_vars[lay.var] = (("image", *(lay.prefixed(d) for d in lay.dims)), data, dict(lay.attrs))
    attrs = {
        **provenance(p.src),
        "blob_names": json.dumps(p.blob_names),
        "metadata_names": json.dumps({v: k for k, v in p.meta_names.items()}),
    }
    return xr.Dataset(data_vars, coords, attrs)


def load_dataarray(path: Path | str, blob: str, lazy: bool = False, model: Path | str | None = None):
    """One blob as an ``xarray.DataArray`` with plain dims: ``(image, channel, y, x)``, ``(image, unit)``, ...

    Coordinates: ``image`` and the metadata along ``image``, indices along the other dims, and
    ``rf_y``, ``rf_x``, ``rf_size`` where the blob has a receptive field.
    """
    require("xarray", what="savedeep.load_dataarray")
    import xarray as xr

    p = plan(path, [blob], model)
    lay = p.layouts[0]
    coords: dict[str, Any] = {"image": ("image", np.array(p.keys, dtype=object))}
    for col, var in p.meta_names.items():
        coords[var] = ("image", np.array(p.meta[col], dtype=object))
    coords.update({c: (d, v) for c, (d, v) in lay.coords.items()})
    attrs = {**provenance(p.src), **lay.attrs}
    return xr.DataArray(
        _blob_data(p.src, blob, _lazy(lazy)), coords=coords, dims=("image", *lay.dims), name=lay.var, attrs=attrs
    )


def load_assembly(
    path: Path | str, blobs: Sequence[str] | str | None = None, lazy: bool = False, model: Path | str | None = None
):
    """A Brain-Score-style flat ``xarray.DataArray``: dims ``presentation`` x ``neuroid``.

    Neuroids are every unit of every blob, in blob order, each blob flattened in C order
    (channel, then y, then x). Neuroid coordinates follow Brain-Score's model-tools names:
    ``model``, ``layer`` (the blob name), ``neuroid_num`` (index in the layer), ``neuroid_id``
    (``model.layer.neuroid_num``), ``channel``, ``channel_x`` (column), ``channel_y`` (row);
    blobs without spatial axes have ``channel`` = the unit and NaN ``channel_x``/``channel_y``, as in
    Brain-Score. Plus ``rf_y``, ``rf_x``, ``rf_size`` (NaN where there is no receptive field).
    Presentation coordinates: ``stimulus_id`` (the image key), ``image`` (the same) and the metadata columns.
    Values are float32 (float16 blobs widened exactly).
    """
    require("xarray", what="savedeep.load_assembly")
    import xarray as xr

    p = plan(path, blobs, model)
    model_id = Path(str(p.src.manifest.get("model", {}).get("directory", "model"))).name or "model"
    neuroid: dict[str, list[np.ndarray]] = {
        k: [] for k in ("layer", "neuroid_num", "channel", "channel_x", "channel_y", "rf_y", "rf_x", "rf_size")
    }
    parts = []
    for lay in p.layouts:
        units = int(np.prod(lay.shape, dtype=np.int64))
        idx = np.arange(units)
        neuroid["layer"].append(np.full(units, lay.blob, dtype=object))
        neuroid["neuroid_num"].append(idx)
        nan = np.full(units, np.nan)
        if lay.spatial:
            c, y, x = np.unravel_index(idx, lay.shape)
            neuroid["channel"].append(c)
            neuroid["channel_x"].append(x.astype(np.float64))
            neuroid["channel_y"].append(y.astype(np.float64))
            if "rf_y" in lay.coords:
                neuroid["rf_y"].append(lay.coords["rf_y"][1][y])
                neuroid["rf_x"].append(lay.coords["rf_x"][1][x])
                neuroid["rf_size"].append(lay.coords["rf_size"][1][y, x].astype(np.float64))
            else:
                for k in ("rf_y", "rf_x", "rf_size"):
                    neuroid[k].append(nan)
        else:
            neuroid["channel"].append(idx if len(lay.shape) == 1 else np.unravel_index(idx, lay.shape)[0])
            for k in ("channel_x", "channel_y", "rf_y", "rf_x", "rf_size"):
                neuroid[k].append(nan)
        data = _blob_data(p.src, lay.blob, _lazy(lazy))
        parts.append(data.reshape(len(p.keys), units).astype(np.float32))
    if lazy:
        import dask.array as da

        values = da.concatenate(parts, axis=1) if parts else np.empty((len(p.keys), 0), np.float32)
    else:
        values = np.concatenate(parts, axis=1) if parts else np.empty((len(p.keys), 0), np.float32)
    ncoords = {k: ("neuroid", np.concatenate(v) if v else np.array([])) for k, v in neuroid.items()}
    layers = ncoords["layer"][1]
    nums = ncoords["neuroid_num"][1]
    ncoords["model"] = ("neuroid", np.full(len(layers), model_id, dtype=object))
    ncoords["neuroid_id"] = (
        "neuroid",
        np.array([f"{model_id}.{lay}.{num}" for lay, num in zip(layers, nums)], dtype=object),
    )
    keys = np.array(p.keys, dtype=object)
    pcoords: dict[str, Any] = {"stimulus_id": ("presentation", keys), "image": ("presentation", keys)}
    for col, var in p.meta_names.items():
        pcoords[var] = ("presentation", np.array(p.meta[col], dtype=object))
    return xr.DataArray(
        values,
        dims=("presentation", "neuroid"),
        coords={**pcoords, **ncoords},
        name="activations",
        attrs={**provenance(p.src), "blob_names": json.dumps(p.blob_names)},
    )
