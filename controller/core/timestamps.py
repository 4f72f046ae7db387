"""The one timestamp helper: epoch seconds to ISO 8601 in UTC and back.

Status files, history entries, rollups and feedback files write times with
:func:`iso` (``2026-12-03T10:55:36Z``); everything that reads them back uses
:func:`epoch`, which also takes offsets, naive times (UTC) and the ``datetime``
YAML makes of an unquoted timestamp, and answers None for anything else.

Pure: the time is always a parameter. Called across core, app and ui.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["epoch", "iso"]


def iso(at: float) -> str:
    """``at`` (epoch seconds) as ISO 8601 in UTC, to the second; ``?`` if out of range."""
    try:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "?"


def epoch(value: object) -> float | None:
    """Epoch seconds of an ISO 8601 time (``Z`` or an offset; naive is UTC), or of a
    ``datetime``; None for anything else."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
