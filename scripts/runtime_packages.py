"""Print the Debian packages that savedeep loads at run time, one a line (for the Containerfile).

The Containerfile's build stage runs scripts/setup.sh (compilers, -dev packages, pycaffe's build);
its runtime stage needs only the shared libraries and the Python that a run loads. Rather than a
second list of packages to keep in step with setup.sh, this imports what savedeep's processes
import (the engines, the image decoders, Parquet, the report, the exporters), then asks dpkg which
package owns each file loaded from outside the virtualenv: the interpreter, its standard library
modules, and every shared library mapped into the process (/proc/self/maps). Libraries that wheels
bring along (torch's, the nvidia-* wheels') live in the virtualenv and need no package.

Usage: .venv/bin/python scripts/runtime_packages.py > packages.txt
A module the set-up did not install (pycaffe after --no-caffe, torch after --no-torch) is left out.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

# What savedeep's parent and its workers import: the CLI and library, the workers, both engines and
# the optional parts (report, export, convert). Each one that is missing is skipped (its set-up
# option was off), named on stderr.
MODULES = [
    "savedeep",
    "savedeep.cli",
    "savedeep.runner.pipeline",
    "savedeep.analysis.report",
    "savedeep.runner.validate",
    "savedeep._workers.producer",
    "savedeep._workers.consumer",
    "savedeep._workers.writer",
    "savedeep.engines.torch_engine",
    "savedeep.engines.caffe_engine",
    "caffe",
    "torch",
    "cv2",
    "simplejpeg",
    "PIL.Image",
    "pyarrow.parquet",
    "pandas",
    "matplotlib.pyplot",
    "h5py",
    "netCDF4",
    "scipy.io",
    "xarray",
    "onnx",
    "onnxruntime",
    "ssl",
    "sqlite3",
    "lzma",
    "bz2",
    "ctypes",
    "multiprocessing.shared_memory",
    "hashlib",
    "zlib",
    "readline",
    "curses",
    "decimal",
]


def loaded_files() -> set[str]:
    files = {os.path.realpath(sys._base_executable)}
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if path:
            files.add(os.path.realpath(path))
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                files.add(os.path.realpath(parts[5].strip()))
    return files


def owners(paths: list[str]) -> set[str]:
    """Debian packages owning these paths (paths no package owns are skipped)."""
    packages: set[str] = set()
    for i in range(0, len(paths), 200):
        # dpkg -S: "pkg[:arch][, pkg2]: /path" per owned path; unowned paths go to stderr.
        out = subprocess.run(["dpkg", "-S", *paths[i : i + 200]], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if ": " not in line or line.startswith("diversion "):
                continue
            for pkg in line.split(": ", 1)[0].split(", "):
                packages.add(pkg.split(":", 1)[0])
    return packages


def main() -> int:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            print(f"runtime_packages.py: {name} not installed, left out ({e})", file=sys.stderr)
    venv = os.path.realpath(sys.prefix)
    outside = sorted(p for p in loaded_files() if not p.startswith(venv + os.sep) and os.path.exists(p))
    interpreter = os.path.realpath(sys._base_executable)
    if not owners([interpreter]):
        print(
            f"runtime_packages.py: error: no Debian package owns the interpreter {interpreter}; run it with the "
            "virtualenv of a set-up made with Debian's python3.11 (.venv/bin/python scripts/runtime_packages.py)",
            file=sys.stderr,
        )
        return 1
    found = owners(outside)
    print("\n".join(sorted(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
