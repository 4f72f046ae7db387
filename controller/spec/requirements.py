"""A model's Python requirements (``spec.python``), read as untrusted text.

Owns what a requirement line may be: a PEP 508 requirement by name (with
versions, extras and markers), never an option (``-e``, ``--index-url``,
``-r``: the controller alone decides where packages come from), a URL or a
path. :func:`requirement_lines` gives the canonical, sorted, deduplicated set
that names an environment, and one problem per refused line. Called by the
spec rules (file:line diagnostics) and by the environment builder
(:mod:`controller.adapters.environments`) before it installs anything. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

__all__ = ["MAX_REQUIREMENTS", "Refused", "requirement_lines", "split_requirements_file"]

#: At most this many requirements per model (the schema caps the list at 200).
MAX_REQUIREMENTS = 400
_MAX_LINE = 512


@dataclass(frozen=True)
class Refused:
    """Line ``index`` (0-based, in the order given) and why it was refused."""

    index: int
    text: str
    why: str


def split_requirements_file(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of each requirement of a requirements file: comments
    (``#`` at the start or after a space) and blank lines dropped, continuation
    backslashes refused later as part of the line."""
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def _refusal(line: str) -> str | None:
    if len(line) > _MAX_LINE:
        return f"longer than {_MAX_LINE} characters"
    if line.startswith("-"):
        return (
            "options are not allowed (the controller decides where packages come from: "
            "its package index or local wheel directories)"
        )
    if line.endswith("\\"):
        return "line continuations are not allowed: one requirement per line"
    try:
        requirement = Requirement(line)
    except InvalidRequirement as exc:
        return f"not a PEP 508 requirement ({str(exc).splitlines()[0]})"
    if requirement.url:
        return "a URL or path reference (name @ ...) is not allowed: name a package and its version"
    return None


def _canonical(line: str) -> str:
    requirement = Requirement(line)
    requirement.name = canonicalize_name(requirement.name)
    requirement.extras = {canonicalize_name(extra) for extra in requirement.extras}
    return str(requirement)


def requirement_lines(lines: Iterable[str]) -> tuple[tuple[str, ...], list[Refused]]:
    """The canonical, sorted, deduplicated requirements of ``lines`` (each already
    one requirement), and what was refused."""
    kept: set[str] = set()
    refused: list[Refused] = []
    for index, raw in enumerate(lines):
        line = raw.strip()
        if index >= MAX_REQUIREMENTS:
            refused.append(Refused(index, line[:80], f"more than {MAX_REQUIREMENTS} requirements"))
            break
        why = _refusal(line)
        if why is not None:
            refused.append(Refused(index, line[:80], why))
            continue
        kept.add(_canonical(line))
    return tuple(sorted(kept)), refused
