"""What ``mdc`` prints, and the exit codes scripts can trust.

Owns the exit codes, terminal styling (colour only on a terminal, never with
``NO_COLOR``), compiler-style error listings and the JSON shape of a load
result. Shared by :mod:`controller.cli.main` and :mod:`controller.cli.verbs`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from controller.spec.documents import Diagnostic
from controller.spec.loader import LoadResult

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_USAGE",
    "Style",
    "counts",
    "json_result",
    "plural",
    "report",
    "silence_stdout",
]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
#: Ctrl-C (128 + SIGINT), as a shell reports a command it interrupted.
EXIT_INTERRUPTED = 130
#: The reader of stdout went away (128 + SIGPIPE), as git exits under ``| head``.
EXIT_BROKEN_PIPE = 141


class Style:
    """ANSI styling, switched on only for a terminal without NO_COLOR."""

    def __init__(self, stream: TextIO) -> None:
        self.on = (
            stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        )

    def __call__(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def bold(self, text: str) -> str:
        return self(text, "1")

    def red(self, text: str) -> str:
        return self(text, "31")

    def green(self, text: str) -> str:
        return self(text, "32")

    def yellow(self, text: str) -> str:
        return self(text, "33")


def silence_stdout() -> None:
    """After a broken pipe: send what stdout still buffers (and whatever the
    interpreter flushes at exit) to /dev/null, so no second error is printed."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def counts(result: LoadResult) -> str:
    d = result.desired
    parts = [
        plural(len(d.models), "model"),
        plural(len(d.pools), "pool"),
        plural(len(d.policies), "rollout policy", "rollout policies"),
    ]
    return ", ".join(parts)


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def report(diagnostics: Sequence[Diagnostic], stream: TextIO) -> None:
    style = Style(stream)
    for d in diagnostics:
        where = style.bold(f"{d.file}:{d.line}:{d.column}:")
        path = f" {d.path}:" if d.path else ""
        print(f"{where}{path} {style.red(d.message)} [{d.rule}]", file=stream)
    files = len({d.file for d in diagnostics})
    print(
        f"{plural(len(diagnostics), 'error')} in {plural(files, 'file')}",
        file=stream,
    )


def json_result(path: str, result: LoadResult) -> dict[str, Any]:
    return {
        "path": path,
        "valid": result.ok,
        "counts": {
            "models": len(result.desired.models),
            "pools": len(result.desired.pools),
            "policies": len(result.desired.policies),
        },
        "errors": [d.as_dict() for d in result.diagnostics],
        "invalid": sorted(str(ref) for ref in result.invalid),
    }
