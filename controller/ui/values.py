"""Values read from status files and reports, which are untrusted input (the
status branch can be edited by hand, and YAML reads ``1.0`` as a number and an
unquoted time as a ``datetime``): each helper takes whatever is there and gives
a value of one type, or None (or ``-``) when it cannot, never an exception.

Owns :func:`as_int`, :func:`as_number` (finite only), :func:`epoch_of`,
:func:`iso`, :func:`as_text`, :func:`value_text` and :func:`format_age`. Pure.
Called by :mod:`controller.ui.status_table`, :mod:`controller.ui.rollout_view`
and :mod:`controller.ui.dashboard`.
"""

from __future__ import annotations

import math
from datetime import datetime

from controller.core.timestamps import epoch, iso

__all__ = ["as_int", "as_number", "as_text", "epoch_of", "format_age", "iso", "value_text"]


def as_int(value: object) -> int | None:
    """``value`` when it is a real integer (a hand-edited ``step: two`` must not
    break anything)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_number(value: object) -> float | None:
    """``value`` as a float when it is a finite int or float (never a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def epoch_of(value: object) -> float | None:
    """Epoch seconds of an ISO 8601 time, or of the ``datetime`` YAML makes of an
    unquoted one (:func:`controller.core.timestamps.epoch`); None for anything else."""
    return epoch(value)


def format_age(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h``, ``2d`` (whole units, rounded down); ``-`` if unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    if whole < 86400:
        return f"{whole // 3600}h"
    return f"{whole // 86400}d"


def as_text(value: object) -> str | None:
    """A value from a status file as text for JSON (None stays None; a
    ``datetime`` becomes ISO 8601 UTC)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        at = epoch(value)
        return None if at is None else iso(at)
    return str(value)


def value_text(value: object) -> str:
    """A measured value for people: a number to 4 significant digits, ``-`` for
    None, anything else as it is."""
    number = as_number(value)
    if number is not None:
        return f"{number:.4g}"
    return "-" if value is None else str(value)
