"""A command run on a real pseudo-terminal, for the tests of what ``mdc`` shows
only on a terminal (colour, progress lines)."""

from __future__ import annotations

import os
import pty
import select
import subprocess

from tests.conftest import ROOT

__all__ = ["run_in_terminal"]


def run_in_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``argv`` with stdout and stderr on a pty: its exit code and all it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, env=env, cwd=ROOT)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(leader, 4096)
        except OSError:  # the follower side closed: the command is done
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait(timeout=30)
    os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")
