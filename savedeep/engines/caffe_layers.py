"""What the installed pycaffe can run, known in the parent without importing pycaffe.

NOTE [caffe engine refusals]
============================

pycaffe aborts the whole process (a glog ``FATAL``) on a layer it cannot run,
instead of raising. The caffe engine refuses those layers in one line first
(:func:`check_runnable`), for two reasons:

(a) savedeep's own rule: STOCHASTIC pooling (Pooling, SPP) on the CPU, which
    Caffe computes only in CUDA;
(b) the layer's type is missing from this pycaffe's layer registry
    (``caffe.layer_type_list()``): Clip and Swish, which came to BVLC Caffe
    after the fork that scripts/setup.sh builds, or a type a build of another
    fork lacks. The registry, not a fixed list, decides: a pycaffe that has
    the type runs it.

The consumer checks both before it builds the net, and the preflight
(savedeep/runner/preflight.py) checks the same before anything starts. The
parent never imports pycaffe (its CUDA build touches CUDA on import), so
:func:`layer_registry` reads the registry in a short subprocess. That
subprocess loads only the ``_caffe`` extension (not the ``caffe`` package,
whose ``__init__`` imports scikit-image and protobuf) with OpenBLAS on one
thread and no GPU visible, and prints the types and the Caffe libraries it
loaded. The answer is cached per pycaffe install in
``$XDG_CACHE_HOME/savedeep/caffe-layers.json`` (``~/.cache`` by default),
keyed by the package folder and valid while the size and mtime of every
library it loaded (``_caffe*.so``, ``libcaffe*``, also one outside the
package, as a source build links) and of the package's ``*.so*`` files are
unchanged. Cost: benchmarks/bench_caffe_layers.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Collection

from savedeep.errors import UnsupportedLayerError

if TYPE_CHECKING:  # pragma: no cover
    from savedeep.caffe.model import Net

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 60.0
CACHE_NAME = "caffe-layers.json"
CACHE_FORMAT = 1

# Runs in `python -I -S -c` with the parent's sys.path: the _caffe extension of the package folder
# argv[1] (the whole package where there is no such extension), never a GPU. Prints one JSON object.
_PROBE = r"""
import importlib.machinery as m, importlib.util, json, os, sys
pkg = sys.argv[1]
sys.path[:] = json.loads(sys.argv[2])
spec = m.FileFinder(pkg, (m.ExtensionFileLoader, m.EXTENSION_SUFFIXES)).find_spec("_caffe")
if spec is None:
    sys.path.insert(0, os.path.dirname(pkg))
    import caffe as mod
else:
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
types = sorted(set(mod.layer_type_list()))
files = set()
try:
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith(("libcaffe", "_caffe")):
                files.add(parts[5].strip())
except OSError:
    pass
print(json.dumps({"types": types, "files": sorted(files)}))
"""


@dataclass(frozen=True)
class Registry:
    """The layer types one pycaffe install has, and where it is (for the messages)."""

    pycaffe: Path  # the caffe package folder
    types: frozenset[str]


def pycaffe_dir() -> Path | None:
    """The folder of the ``caffe`` package this Python would import (found, not imported), or None."""
    try:
        spec = importlib.util.find_spec("caffe")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent


def cache_file() -> Path:
    """Where the registries are cached: ``$XDG_CACHE_HOME/savedeep/`` (``~/.cache/savedeep/``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "savedeep" / CACHE_NAME


def _stamp(paths: Collection[str]) -> dict[str, list[int] | None]:
    """Size and mtime (ns) of each path; None for a path that is gone."""
    out: dict[str, list[int] | None] = {}
    for p in sorted(paths):
        try:
            st = os.stat(p)
        except OSError:
            out[p] = None
        else:
            out[p] = [st.st_size, st.st_mtime_ns]
    return out


def _package_libraries(pkg: Path) -> set[str]:
    return {str(p) for p in pkg.glob("*.so*")}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _cached(entries: dict, pkg: Path) -> frozenset[str] | None:
    entry = entries.get(str(pkg))
    if not isinstance(entry, dict) or not isinstance(entry.get("stamp"), dict):
        return None
    stamp = entry["stamp"]
    if _stamp(set(stamp) | _package_libraries(pkg)) != stamp:
        return None  # rebuilt, reinstalled or a library added: ask again
    types = entry.get("types")
    return frozenset(types) if isinstance(types, list) and types else None


def _write_cache(path: Path, pkg: Path, stamp: dict, types: frozenset[str]) -> None:
    """Add (or replace) ``pkg``'s entry, atomically; a cache that cannot be written is only not kept."""
    try:
        entries = _read_cache(path)
        entries[str(pkg)] = {"stamp": stamp, "types": sorted(types)}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_NAME}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": CACHE_FORMAT, "entries": entries}, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("cannot cache pycaffe's layer types in %s: %s", path, exc)


def probe_registry(pkg: Path, timeout: float = PROBE_TIMEOUT_S) -> tuple[frozenset[str], list[str]]:
    """Ask the pycaffe in ``pkg`` for its layer types in a subprocess: (types, the Caffe libraries it loaded).

    Raises RuntimeError when the subprocess fails or prints no answer.
    """
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")
    # the registry needs neither threads nor a GPU: OpenBLAS starts no pool, a CUDA build opens no context
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    try:
        r = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _PROBE, str(pkg), json.dumps(sys.path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"the probe did not finish: {exc}") from None
    lines = r.stdout.strip().splitlines()
    try:
        d = json.loads(lines[-1]) if lines else None
        types, files = d["types"], d["files"]  # type: ignore[index]
        if not (isinstance(types, list) and types and isinstance(files, list)):
            raise ValueError(d)
    except (ValueError, KeyError, TypeError):
        how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit status {r.returncode}"
        raise RuntimeError(
            f"the probe failed ({how}): {r.stderr.strip()[-300:] or r.stdout.strip()[-300:]!r}"
        ) from None
    return frozenset(types), files


def layer_registry(pkg: Path | None = None, cache: Path | None = None) -> Registry | None:
    """This pycaffe's layer types (``caffe.layer_type_list()``), from the cache or a subprocess.

    ``pkg``: the caffe package folder (default: the one this Python would import); ``cache``: the cache
    file (default :func:`cache_file`). None, with a warning, where pycaffe cannot be found or the
    subprocess fails: the consumer then checks the layers itself when it starts.
    """
    pkg = pycaffe_dir() if pkg is None else pkg.resolve()
    if pkg is None:
        return None
    cache = cache_file() if cache is None else cache
    types = _cached(_read_cache(cache), pkg)
    if types is not None:
        return Registry(pkg, types)
    try:
        types, files = probe_registry(pkg)
    except RuntimeError as exc:
        log.warning(
            "cannot read the layer types of the pycaffe in %s (%s); its consumers check them when they start",
            pkg,
            exc,
        )
        return None
    _write_cache(cache, pkg, _stamp(set(files) | _package_libraries(pkg)), types)
    return Registry(pkg, types)


def check_runnable(net: "Net", known: Collection[str], on_gpu: bool, prototxt: Path | str, pycaffe: str) -> None:
    """Refuse, naming the layer, what this pycaffe would abort on instead of reporting (NOTE [caffe engine
    refusals]): a type missing from ``known`` (its layer registry), STOCHASTIC pooling unless ``on_gpu``.

    ``pycaffe`` names the pycaffe in the message (its folder).
    """
    known = set(known)
    for layer in net.layers:
        if layer.type not in known:
            raise UnsupportedLayerError(
                f"{prototxt}: layer {layer.name!r} has type {layer.type!r}, which this pycaffe ({pycaffe}) does "
                "not have; use engine: torch, which runs it, or build a pycaffe that has the layer"
            )
        pool = (
            layer.param.pooling_param.pool
            if layer.type == "Pooling"
            else layer.param.spp_param.pool
            if layer.type == "SPP"
            else None
        )
        if pool == "STOCHASTIC" and not on_gpu:
            raise UnsupportedLayerError(
                f"{prototxt}: layer {layer.name!r} ({layer.type}) pools STOCHASTIC, which Caffe computes only on a "
                "GPU; use engine: torch, which computes Caffe's test-time formula, or a CUDA pycaffe on a GPU"
            )
