"""Sizes for people: a leaf module, so that any module can print a size without importing another."""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float) -> str:
    """A size in the largest binary unit that keeps it at 1 or more: "512 B", "1.50 KiB", "12.3 MiB", "4.00 GiB".

    Three significant figures, never "0.00": a size under 1 KiB is whole bytes.
    """
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    value, unit = n, "B"
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}" if abs(value) >= 10 else f"{value:.2f} {unit}"
