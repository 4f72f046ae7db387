"""The demo's git daemon gets a port without a race: git daemon cannot take a
bound socket, so a port taken between the choice and its bind is tried anew."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import controller.demo as demo_module
from controller.demo import Demo

pytestmark = pytest.mark.integration


def test_a_port_taken_meanwhile_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]
    real = demo_module._free_port
    monkeypatch.setattr(demo_module, "_free_port", lambda: ports.pop(0) if ports else real())
    try:
        with Demo(tmp_path / "demo") as demo:
            demo.setup()
            assert demo.git_port != taken.getsockname()[1]
            assert demo.remote == f"git://127.0.0.1:{demo.git_port}/models.git"
            assert demo.git_process.poll() is None
    finally:
        taken.close()
