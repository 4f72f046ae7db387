from __future__ import annotations

import json

import pytest

from controller.spec.schema import schema_dir
from controller.spec.units import (
    DURATION_PATTERN,
    MEMORY_PATTERN,
    format_bytes,
    format_duration,
    parse_duration,
    parse_memory,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("0s", 0),
        ("2h", 7200),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5 m", "1d", "-1s", "s", "1h 30m", "1.s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("10Gi", 10 * 2**30),
        ("512Mi", 512 * 2**20),
        ("8G", 8 * 10**9),
        ("1.5Gi", 3 * 2**29),
        ("1024", 1024),
        ("1Ti", 2**40),
        ("1Ki", 1024),
    ],
)
def test_parse_memory(text: str, amount: int) -> None:
    assert parse_memory(text) == amount


@pytest.mark.parametrize("text", ["", "Gi", "10GB", "10gi", "-1Gi", "1 Gi"])
def test_parse_memory_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (30, "30s"),
        (90, "1m30s"),
        (3600, "1h"),
        (3661, "1h1m1s"),
        (450, "7m30s"),
    ],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("amount", "text"),
    [(10 * 2**30, "10Gi"), (3 * 2**29, "1.5Gi"), (512 * 2**20, "512Mi"), (100, "100")],
)
def test_format_bytes(amount: int, text: str) -> None:
    assert format_bytes(amount) == text


def test_schema_patterns_match_the_parsers() -> None:
    common = json.loads((schema_dir() / "common.schema.json").read_text())
    assert common["$defs"]["duration"]["pattern"] == DURATION_PATTERN
    assert common["$defs"]["memory"]["pattern"] == MEMORY_PATTERN
