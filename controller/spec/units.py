"""Quantities in specs: durations (``30s``, ``1h30m``), memory (``10Gi``) and
shares (``1%`` or ``0.01``).

Pure parsing and formatting, shared by the spec loader, the plan printer and
the GPU ledger. The accepted forms are the ones Kubernetes users already know:
Go-style durations and binary (``Ki``, ``Mi``, ``Gi``, ``Ti``) or decimal
(``K``, ``M``, ``G``, ``T``) memory suffixes. The JSON Schemas in ``schemas/``
use the same grammar (``DURATION_PATTERN``, ``MEMORY_PATTERN``); a unit test
keeps them in step.
"""

from __future__ import annotations

import re

__all__ = [
    "DURATION_PATTERN",
    "MEMORY_PATTERN",
    "SHARE_PATTERN",
    "format_bytes",
    "format_duration",
    "parse_duration",
    "parse_memory",
    "parse_share",
]

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
MEMORY_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,15})?(Ki|Mi|Gi|Ti|K|M|G|T)?$"

SHARE_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,15})?%$"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MEMORY = re.compile(MEMORY_PATTERN)
_MEMORY_UNITS = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``5m``, ``1h30m`` or ``250ms``.

    Raises :class:`ValueError` with a plain sentence for anything else.
    """
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration like 30s, 5m or 1h30m: {text!r}")
    return sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)
    )


def parse_memory(text: str) -> int:
    """Bytes in a memory amount such as ``10Gi``, ``512Mi`` or ``8G``."""
    match = _MEMORY.fullmatch(text)
    if match is None:
        raise ValueError(f"not a memory amount like 512Mi or 10Gi: {text!r}")
    suffix = match.group(2)
    number = text[: match.start(2)] if suffix else text
    return int(float(number) * _MEMORY_UNITS[suffix])


def parse_share(value: float | int | str) -> float:
    """A share from 0 to 1: a number (``0.01``) or a percentage (``"1%"``)."""
    if isinstance(value, str):
        if not re.fullmatch(SHARE_PATTERN, value):
            raise ValueError(f"not a share like 1% or 0.01: {value!r}")
        return float(value[:-1]) / 100
    return float(value)


def format_duration(seconds: float) -> str:
    """The shortest Go-style rendering: ``90`` -> ``1m30s``, ``0.25`` -> ``250ms``."""
    if seconds < 0:
        raise ValueError(f"negative duration: {seconds}")
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    parts.append(f"{secs}s" if secs or not (hours or minutes) else "")
    return "".join(parts)


def format_bytes(amount: int) -> str:
    """Binary units with at most one decimal: ``10737418240`` -> ``10Gi``."""
    for suffix, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if amount >= size:
            value = amount / size
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.1f}{suffix}"
    return str(amount)
