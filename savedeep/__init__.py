"""savedeep: save the activations of a Caffe CNN's blobs for every image of a directory.

Python API::

    import savedeep
    result = savedeep.run("config.yaml")              # or a savedeep.config.Config
    df = savedeep.load("out/acts.pk")                 # image, metadata, one column per blob
    fc7 = savedeep.load_array("out/acts.pk", "fc7")   # (N, 4096) without reading other blobs
    ds = savedeep.load_xarray("out/acts.pk")          # xarray.Dataset: dims, coordinates, receptive fields
    da = savedeep.load_assembly("out/acts.pk")        # Brain-Score-style presentation x neuroid DataArray
    savedeep.export("out/acts.pk", "netcdf")          # out/acts.nc (also "npy", "mat")
    m, keys = savedeep.rdm("out/acts.pk", "fc7")      # 1 - Pearson r between images (rsatoolbox's correlation)
    sim = savedeep.blob_similarity("out/acts.pk", ["fc6", "fc7"])   # correlation between the blobs' RDMs
    savedeep.report("out/acts.pk")                    # out/acts.report.html, one self-contained page
    savedeep.convert("demo/model", "onnx", "nsfw.onnx")  # the net as ONNX (or "torch": nsfw.py, a module)
    t = savedeep.transform("demo/model")              # path or PIL image -> the exact input tensor (3, H, W)
"""

from __future__ import annotations

import typing as _typing
from pathlib import Path as _Path

from savedeep import _moved
from savedeep.version import __version__

_moved.install()  # the old flat paths (savedeep.model, savedeep.output, ...): see savedeep/_moved.py

# The names below are for annotations only; at run time the package's namespace holds __all__ (and the
# submodules) and nothing else: tests/test_public_api.py.
if _typing.TYPE_CHECKING:  # heavy modules are imported on first use, keeping `import savedeep` cheap
    from pathlib import Path
    from typing import Any

    import numpy as np
    import pandas as pd

    from savedeep.config import Config
    from savedeep.runner.pipeline import RunResult

__all__ = [
    "run",
    "load",
    "load_array",
    "load_config",
    "load_xarray",
    "load_dataarray",
    "load_assembly",
    "export",
    "rdm",
    "blob_similarity",
    "blob_stats",
    "report",
    "convert",
    "transform",
    "merge",
    "__version__",
]


def load_config(path: str | Path | None = None, **overrides: Any) -> "Config":
    """Load and validate a config file, with keyword overrides (same keys as the YAML)."""
    from savedeep.config import load_config as _load

    return _load(_Path(path) if path is not None else None, overrides)


def run(
    config: "Config | str | Path",
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    break_lock: bool = False,
    task: Any = None,
    **overrides: Any,
) -> "RunResult":
    """Extract the activations described by ``config`` (a Config or a YAML path, plus overrides).

    ``break_lock``: take the output's lock from a run that is gone (crashed on another host).
    ``task``: "K/N" (or a savedeep.runner.tasks.TaskSpec): only task K's share of the shards; see ``merge``.
    """
    from savedeep.config import Config
    from savedeep.runner.pipeline import run as _run

    from savedeep.analysis.report import after_run, require_matplotlib

    if not isinstance(config, Config):
        config = load_config(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    if isinstance(task, str):
        from savedeep.runner.tasks import parse_task

        task = parse_task(task)
    if config.report and task is None:
        require_matplotlib()  # before the run, not after it
    result = _run(config, resume=resume, overwrite=overwrite, progress=progress, break_lock=break_lock, task=task)
    if task is not None:
        return result  # the report and the run's figures belong to the merged output: see merge
    # the run's figures into its log (for savedeep report); the report if asked
    result.report = after_run(config, result)
    return result


def merge(output: str | Path, *, pickle: bool | None = None, break_lock: bool = False) -> Any:
    """Make the shards of an array of tasks (``run(..., task=TaskSpec)``, ``savedeep run --task``) one output."""
    from savedeep.runner.tasks import merge as _merge

    return _merge(output, pickle=pickle, break_lock=break_lock)


def load(path: str | Path, blobs: list[str] | str | None = None) -> "pd.DataFrame":
    """The output as a DataFrame, from the pickle or the Parquet shards (partial outputs too)."""
    from savedeep.data.output import load as _load

    return _load(_Path(path), blobs)


def load_array(path: str | Path, blob: str) -> "np.ndarray":
    """One blob of an output as an (N, *shape) array, reading no other blob."""
    from savedeep.data.output import load_array as _load_array

    return _load_array(_Path(path), blob)


def load_xarray(
    path: str | Path, blobs: list[str] | str | None = None, lazy: bool = False, model: str | Path | None = None
) -> Any:
    """The output as an ``xarray.Dataset`` (one variable per blob, coordinates, receptive fields); see
    :mod:`savedeep.analysis.interop`. ``lazy=True``: dask arrays read shard by shard. ``model``: the model directory,
    for receptive fields, if it moved since the run."""
    from savedeep.analysis.interop import load_xarray as _load_xarray

    return _load_xarray(_Path(path), blobs, lazy=lazy, model=model)


def load_dataarray(path: str | Path, blob: str, lazy: bool = False, model: str | Path | None = None) -> Any:
    """One blob as an ``xarray.DataArray`` with dims ``(image, channel, y, x)`` or ``(image, unit)``."""
    from savedeep.analysis.interop import load_dataarray as _load_dataarray

    return _load_dataarray(_Path(path), blob, lazy=lazy, model=model)


def load_assembly(
    path: str | Path, blobs: list[str] | str | None = None, lazy: bool = False, model: str | Path | None = None
) -> Any:
    """A Brain-Score-style ``presentation`` x ``neuroid`` DataArray of the blobs (see savedeep.analysis.interop)."""
    from savedeep.analysis.interop import load_assembly as _load_assembly

    return _load_assembly(_Path(path), blobs, lazy=lazy, model=model)


def export(
    path: str | Path,
    to: str,
    dest: str | Path | None = None,
    blobs: list[str] | str | None = None,
    overwrite: bool = False,
    model: str | Path | None = None,
    compression_level: int = 1,
) -> Path:
    """Write an output as netCDF4 (``to="netcdf"``), .npy files (``"npy"``) or a MATLAB file (``"mat"``);
    ``compression_level``: netCDF's gzip level, 0-9 (0: none)."""
    from savedeep.analysis.interop import export as _export

    return _export(_Path(path), to, dest, blobs, overwrite=overwrite, model=model, compression_level=compression_level)


def rdm(
    path: str | Path, blob: str, metric: str = "correlation", max_images: int | None = None, seed: int = 0
) -> "tuple[np.ndarray, list[str]]":
    """(RDM, image keys) of one blob: ``1 - Pearson r`` between images (``metric="correlation"``, equal to
    rsatoolbox's ``calc_rdm(..., method="correlation")``) or ``"euclidean"``; above ``max_images`` images a
    subsample drawn by ``numpy.random.default_rng(seed)``. See :mod:`savedeep.analysis.stats`."""
    from savedeep.analysis.stats import rdm as _rdm

    return _rdm(_Path(path), blob, metric=metric, max_images=max_images, seed=seed)


def blob_similarity(
    path: str | Path,
    blobs: list[str] | str | None = None,
    metric: str = "correlation",
    max_images: int | None = None,
    seed: int = 0,
) -> "pd.DataFrame":
    """Blobs x blobs: the Pearson correlation between the blobs' RDMs on the same images."""
    from savedeep.analysis.stats import blob_similarity as _sim

    return _sim(_Path(path), blobs, metric=metric, max_images=max_images, seed=seed)


def blob_stats(path: str | Path, blob: str) -> Any:
    """One blob's statistics over every image (histogram, zeros, dead units, per-unit means), streamed."""
    from savedeep.analysis.stats import blob_stats as _stats

    return _stats(_Path(path), blob)


def report(
    path: str | Path,
    dest: str | Path | None = None,
    blobs: list[str] | str | None = None,
    group_by: str | None = None,
    max_images: int = 500,
    seed: int = 0,
    thumbnails: bool = True,
) -> Path:
    """Write the HTML report of an output (default ``out/acts.report.html``); see :mod:`savedeep.analysis.report`.
    ``thumbnails=False``: do not read the images for the top-image thumbnails."""
    from savedeep.analysis.report import write_report

    return write_report(
        _Path(path), dest, blobs, group_by=group_by, max_images=max_images, seed=seed, thumbnails=thumbnails
    )


def convert(
    model: str | Path,
    to: str,
    dest: str | Path,
    blobs: list[str] | None = None,
    batch: int | str = "dynamic",
    overwrite: bool = False,
) -> Path:
    """Write a model directory's net as ONNX (``to="onnx"``) or for PyTorch (``"torch"``: ``dest`` NAME.py, a
    module with one submodule per layer and its weights in NAME.pt, or NAME.pt2, a torch.export program)
    whose outputs are ``blobs`` (default: the net's outputs); see :mod:`savedeep.engines.conversion`."""
    from savedeep.engines.conversion import convert as _convert

    return _convert(model, to, dest, blobs, batch=batch, overwrite=overwrite)


def transform(source: str | Path, preprocess: dict[str, Any] | None = None) -> Any:
    """savedeep's preprocessing of a model directory or a converted model, as a callable from a path or a
    PIL image to the exact float32 (3, H, W) input tensor (a torchvision ``transform=``); see
    :mod:`savedeep.data.transforms`."""
    from savedeep.data.transforms import transform as _transform

    return _transform(source, preprocess)
