"""Whole-rupiah amounts as people read them: Rp 4.000."""

from __future__ import annotations


def rupiah(amount: int | None) -> str:
    """Indonesian format: dot as thousands separator, no decimals."""
    if amount is None:
        return "–"
    sign = "-" if amount < 0 else ""
    return f"{sign}Rp {abs(int(amount)):,}".replace(",", ".")
