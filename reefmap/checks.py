"""The one check per kind of number a user passes in (configs, options, grids): errors name the value and the rule."""

from __future__ import annotations

import math
from typing import Any

from reefmap.errors import InvalidParameter


def whole_number(name: str, v: Any, lo: int = 0, hi: int | None = None, *, where: str = "") -> int:
    """``v`` as an ``int`` in ``[lo, hi]``; refuses bools, fractions and text. ``where`` prefixes the message."""
    ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and int(v) == v
          and v >= lo and (hi is None or v <= hi))
    if not ok:
        rule = f"from {lo} to {hi}" if hi is not None else "positive" if lo == 1 else f">= {lo}"
        raise InvalidParameter(f"{where}{name} must be a whole number {rule}, got {v!r}")
    return int(v)


def positive_int(name: str, v: Any, *, where: str = "") -> int:
    """``v`` as an ``int`` >= 1."""
    return whole_number(name, v, 1, where=where)


def finite_number(name: str, v: Any, *, where: str = "") -> float:
    """``v`` as a finite ``float``; refuses bools and text."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidParameter(f"{where}{name} must be a finite number, got {v!r}")
    return float(v)


#: the model's numeric precisions: fp32 (default), or autocast of the forward pass to bfloat16 / float16
PRECISIONS = ("fp32", "bf16", "fp16")


def precision(v: Any, *, where: str = "") -> str:
    """``v`` as one of ``PRECISIONS``."""
    if v not in PRECISIONS:
        raise InvalidParameter(f"{where}precision must be one of {', '.join(PRECISIONS)}, got {v!r}")
    return v


__all__ = ["whole_number", "positive_int", "finite_number", "precision", "PRECISIONS"]
