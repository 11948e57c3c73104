"""Files every layer writes or names: atomic writes, content hashes and the Parquet directory beside a pickle.

A leaf module (it imports nothing of savedeep), so that the Caffe model's weight writer, the config and
the demo can use them without importing the output code (:mod:`savedeep.data.output` re-exports them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


def beside(output: Path, suffix: str) -> Path:
    """The file named after an output with ``suffix``, in the same folder: out/acts.pk -> out/acts{suffix}."""
    output = Path(output)
    return output.with_name(output.stem + suffix)


def parquet_dir(output: Path) -> Path:
    """The Parquet directory that goes with the pickle path ``output``."""
    output = Path(output)
    return beside(output, ".parquet") if output.suffix != ".parquet" else output


def glob_escape(text: str) -> str:
    """``text`` matched literally inside a glob pattern (``*``, ``?`` and ``[`` each in brackets)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_file(path: Path):
    """Open a hidden temporary file that replaces ``path`` only once written whole and fsynced."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_file(path) as f:
        f.write(data)
