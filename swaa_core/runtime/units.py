"""Byte counts for people: the one formatter that messages, tables and the app's page use (binary units)."""

from __future__ import annotations

_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_bytes(n: int | float | None, *, digits: int = 2) -> str:
    """``n`` bytes in the largest binary unit it reaches ("1.50 GiB", "512 B"); "–" when unknown (None or NaN).

    ``digits``: decimals of the scaled number (whole bytes have none).
    """
    if n is None or n != n:
        return "–"
    for unit, size in _UNITS:
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{n:.0f} B"
