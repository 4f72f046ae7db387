"""What ``mdc`` prints, and the exit codes scripts can trust.

Owns the exit codes, terminal styling (colour only on a terminal, never with
``NO_COLOR``), the progress line of long work (:func:`progress`: a ``rich``
spinner on a terminal, nothing at all on a pipe or with ``NO_COLOR``),
compiler-style error listings (each value from a spec or a file name shown
through :func:`visible`, the one terminal escaper, defined in
:mod:`controller.core.safe_text` so the plan's text uses it too: a control
character in a file name can forge no line and send no escape sequence), the
JSON shape of a load result and what to do with stdout once its reader has
gone (:func:`silence_stdout`). Shared by the modules of :mod:`controller.cli`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner

from controller.core.safe_text import visible, visible_lines
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
    "progress",
    "report",
    "silence_stdout",
    "visible",
    "visible_lines",
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


@contextlib.contextmanager
def progress(stream: TextIO) -> Iterator[Callable[[str], None]]:
    """A progress line on ``stream`` while the block runs: what it is doing now
    (each call of the function given), beside a spinner, erased at the end.

    Only for a person: on a terminal without ``NO_COLOR`` (or ``TERM=dumb``);
    anywhere else the calls do nothing and nothing is written. Lines printed to
    stderr meanwhile (and to stdout, when it is a terminal too) appear above it.
    """
    if not Style(stream).on:
        yield lambda text: None
        return
    spinner = Spinner("dots", "")
    console = Console(file=stream)
    with Live(
        spinner,
        console=console,
        transient=True,
        refresh_per_second=10,
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=True,
    ):
        yield lambda text: spinner.update(text=text)


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
        where = style.bold(f"{visible(d.file)}:{d.line}:{d.column}:")
        path = f" {visible(d.path)}:" if d.path else ""
        print(f"{where}{path} {style.red(visible(d.message))} [{visible(d.rule)}]", file=stream)
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
