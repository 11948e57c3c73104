"""savedeep: save the activations of a Caffe CNN's blobs for every image of a directory.

Python API::

    import savedeep
    result = savedeep.run("config.yaml")              # or a savedeep.config.Config
    df = savedeep.load("out/acts.pk")                 # image, metadata, one column per blob
    fc7 = savedeep.load_array("out/acts.pk", "fc7")   # (N, 4096) without reading other blobs
    ds = savedeep.load_xarray("out/acts.pk")          # xarray.Dataset: dims, coordinates, receptive fields
    da = savedeep.load_assembly("out/acts.pk")        # Brain-Score-style presentation x neuroid DataArray
    savedeep.export("out/acts.pk", "netcdf")          # out/acts.nc (also "npy", "mat")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from savedeep.version import __version__

if TYPE_CHECKING:  # heavy modules are imported on first use, keeping `import savedeep` cheap
    import numpy as np
    import pandas as pd

    from savedeep.config import Config
    from savedeep.pipeline import RunResult

__all__ = ["run", "load", "load_array", "load_config", "load_xarray", "load_dataarray", "load_assembly", "export",
           "__version__"]


def load_config(path: str | Path | None = None, **overrides: Any) -> "Config":
    """Load and validate a config file, with keyword overrides (same keys as the YAML)."""
    from savedeep.config import load_config as _load

    return _load(Path(path) if path is not None else None, overrides)


def run(config: "Config | str | Path", *, resume: bool = False, overwrite: bool = False,
        progress: bool = False, break_lock: bool = False, **overrides: Any) -> "RunResult":
    """Extract the activations described by ``config`` (a Config or a YAML path, plus overrides).

    ``break_lock``: take the output's lock from a run that is gone (crashed on another host).
    """
    from savedeep.config import Config
    from savedeep.pipeline import run as _run

    if not isinstance(config, Config):
        config = load_config(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return _run(config, resume=resume, overwrite=overwrite, progress=progress, break_lock=break_lock)


def load(path: str | Path, blobs: list[str] | None = None) -> "pd.DataFrame":
    """The output as a DataFrame, from the pickle or the Parquet shards (partial outputs too)."""
    from savedeep.output import load as _load

    return _load(Path(path), blobs)


def load_array(path: str | Path, blob: str) -> "np.ndarray":
    """One blob of an output as an (N, *shape) array, reading no other blob."""
    from savedeep.output import load_array as _load_array

    return _load_array(Path(path), blob)


def load_xarray(path: str | Path, blobs: list[str] | None = None, lazy: bool = False,
                model: str | Path | None = None) -> Any:
    """The output as an ``xarray.Dataset`` (one variable per blob, coordinates, receptive fields); see
    :mod:`savedeep.interop`. ``lazy=True``: dask arrays read shard by shard. ``model``: the model directory,
    for receptive fields, if it moved since the run."""
    from savedeep.interop import load_xarray as _load_xarray

    return _load_xarray(Path(path), blobs, lazy=lazy, model=model)


def load_dataarray(path: str | Path, blob: str, lazy: bool = False, model: str | Path | None = None) -> Any:
    """One blob as an ``xarray.DataArray`` with dims ``(image, channel, y, x)`` or ``(image, unit)``."""
    from savedeep.interop import load_dataarray as _load_dataarray

    return _load_dataarray(Path(path), blob, lazy=lazy, model=model)


def load_assembly(path: str | Path, blobs: list[str] | None = None, lazy: bool = False,
                  model: str | Path | None = None) -> Any:
    """A Brain-Score-style ``presentation`` x ``neuroid`` DataArray of the blobs (see savedeep.interop)."""
    from savedeep.interop import load_assembly as _load_assembly

    return _load_assembly(Path(path), blobs, lazy=lazy, model=model)


def export(path: str | Path, to: str, dest: str | Path | None = None, blobs: list[str] | None = None,
           overwrite: bool = False, model: str | Path | None = None) -> Path:
    """Write an output as netCDF4 (``to="netcdf"``), .npy files (``"npy"``) or a MATLAB file (``"mat"``)."""
    from savedeep.interop import export as _export

    return _export(Path(path), to, dest, blobs, overwrite=overwrite, model=model)
