"""What a model's blobs cost to save: per-image shape and bytes of every blob, for ``savedeep inspect``,
with each blob's receptive field (size and jump in input pixels, see :mod:`savedeep.caffe.receptive_field`).

Works from the prototxt alone (no weights are read), so it answers instantly
even for large models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from savedeep.caffe.model import PROTOTXT_NAME, Net, load_net
from savedeep.errors import ModelError

_FLOAT32, _FLOAT16 = 4, 2


def _net_for(directory_or_prototxt: Path) -> Net:
    path = Path(directory_or_prototxt)
    if path.is_dir():
        prototxt = path / PROTOTXT_NAME
        if not prototxt.is_file():
            raise ModelError(f"{prototxt}: missing; give a model directory holding {PROTOTXT_NAME} or a .prototxt file")
        return load_net(prototxt)
    if not path.exists():
        raise ModelError(f"{path}: not found; give a model directory or a .prototxt file")
    return load_net(path)


def inspect_model(directory_or_prototxt: Path, images: int = 1) -> list[dict[str, Any]]:
    """One row per user-visible blob in net order: shape, values and bytes per image and for ``images`` images."""
    if images < 1:
        raise ValueError("images must be at least 1")
    from savedeep.caffe.receptive_field import receptive_fields

    net = _net_for(directory_or_prototxt)
    shapes = net.blob_shapes(1)
    fields = receptive_fields(net)
    writers = net.producers()
    rows = []
    for blob in net.blobs:
        shape = shapes[blob][1:]
        values = 1
        for d in shape:
            values *= d
        layers = writers.get(blob, [])
        rf = fields.get(blob)
        rows.append(
            {
                "blob": blob,
                "shape": list(shape),
                "values": values,
                "bytes_float32": values * _FLOAT32,
                "bytes_float16": values * _FLOAT16,
                "total_float32": values * _FLOAT32 * images,
                "total_float16": values * _FLOAT16 * images,
                # the layer that creates the blob, then the in-place layers that overwrite it
                "layers": layers,
                # receptive field in input pixels (y, x); None for blobs without spatial axes
                "rf_size": list(rf.size) if rf else None,
                "rf_jump": list(rf.jump) if rf else None,
            }
        )
    return rows


def human_bytes(n: float) -> str:
    """A byte count in B/KiB/MiB/GiB/TiB with three significant figures."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _pair(values: list[int] | None) -> str:
    """A receptive-field size or jump: "11" when equal along y and x, "5x3" (y x x) otherwise, "-" when none."""
    if not values:
        return "-"
    return str(values[0]) if values[0] == values[1] else f"{values[0]}x{values[1]}"


def format_table(rows: list[dict[str, Any]], images: int) -> str:
    """An aligned text table of the rows with a total line for ``images`` images."""
    header = [
        "blob",
        "shape",
        "RF",
        "jump",
        "per image f32",
        "per image f16",
        f"{images} images f32",
        f"{images} images f16",
        "overwritten in place by",
    ]
    # A blob written by more than one layer holds the LAST one's values (Caffe's in-place semantics).
    body = [
        [
            r["blob"],
            "x".join(map(str, r["shape"])) or "scalar",
            _pair(r.get("rf_size")),
            _pair(r.get("rf_jump")),
            human_bytes(r["bytes_float32"]),
            human_bytes(r["bytes_float16"]),
            human_bytes(r["total_float32"]),
            human_bytes(r["total_float16"]),
            ", ".join(r.get("layers", [])[1:]),
        ]
        for r in rows
    ]
    total = [
        "total",
        f"{len(rows)} blobs",
        "",
        "",
        human_bytes(sum(r["bytes_float32"] for r in rows)),
        human_bytes(sum(r["bytes_float16"] for r in rows)),
        human_bytes(sum(r["total_float32"] for r in rows)),
        human_bytes(sum(r["total_float16"] for r in rows)),
        "",
    ]
    widths = [max(len(line[i]) for line in [header, *body, total]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        # names and shapes left-aligned, sizes right-aligned
        return "  ".join(
            c.ljust(w) if i < 2 or i == 8 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *map(fmt, body), rule, fmt(total)])


def to_json(rows: list[dict[str, Any]], images: int) -> dict[str, Any]:
    """A JSON-serialisable summary: the rows and the totals for ``images`` images."""
    return {
        "images": images,
        "blobs": rows,
        "total": {
            "bytes_float32": sum(r["bytes_float32"] for r in rows),
            "bytes_float16": sum(r["bytes_float16"] for r in rows),
            "total_float32": sum(r["total_float32"] for r in rows),
            "total_float16": sum(r["total_float16"] for r in rows),
        },
    }
