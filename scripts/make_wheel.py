"""Pack a staged directory of top-level packages into a binary wheel.

Used for pycaffe, whose sdist cannot build itself (its setup.py needs conda):
we compile it with its Makefile and pack the result. The wheel format is the
one of PEP 427: a zip with a ``*.dist-info`` directory holding METADATA, WHEEL
and RECORD (path, sha256 in urlsafe base64 without padding, size).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import zipfile
from pathlib import Path


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(stage: Path, wheel: Path, name: str, version: str, requires: list[str]) -> None:
    """Write ``wheel`` from every file under ``stage``."""
    tag = wheel.name[:-4].split("-", 2)[2]  # python-abi-platform
    dist_info = f"{name}-{version}.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    extra = {
        f"{dist_info}/METADATA": "\n".join(metadata) + "\n",
        f"{dist_info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: savedeep make_wheel\nRoot-Is-Purelib: false\nTag: {tag}\n"
        ),
    }
    records = []
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(stage.rglob("*")):
            if path.is_dir():
                continue
            arc = path.relative_to(stage).as_posix()
            data = path.read_bytes()
            info = zipfile.ZipInfo(arc, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (os.stat(path).st_mode & 0o777 | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            records.append(f"{arc},{_digest(data)},{len(data)}")
        for arc, text in extra.items():
            data = text.encode()
            zf.writestr(arc, data)
            records.append(f"{arc},{_digest(data)},{len(data)}")
        records.append(f"{dist_info}/RECORD,,")
        zf.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    tmp.replace(wheel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", type=Path)
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--requires", action="append", default=[])
    args = parser.parse_args()
    make_wheel(args.stage, args.wheel, args.name, args.version, args.requires)


if __name__ == "__main__":
    main()
