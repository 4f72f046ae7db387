"""What the end-to-end tests share: ``mdc run`` as a separate process, as an
operator runs it (:class:`Controller`) with a configuration file
(:func:`mdc_config`), a fixture that stops every controller a test started and
whatever it left running, and :func:`wait_for`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.demo import RANKER, Demo
from tests.bentos import bentoml_processes


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, KeyError, ValueError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def mdc_config(tmp_path: Path, demo: Demo, **settings: object) -> tuple[Path, int]:
    """An ``mdc.yaml`` for the demo's repository, as an operator writes one: the state
    under ``tmp_path``, any free port to listen on, quick ticks, the demo's webhook
    secret and a fixed router port for search-ranker (its URL outlives restarts);
    ``settings`` add keys or override them. Returns the file and the router port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        router_port = int(s.getsockname()[1])
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(demo.secret)
    config = tmp_path / "mdc.yaml"
    values: dict[str, object] = {
        "repo": demo.remote,
        "stateDir": str(tmp_path / "state"),
        "listen": "127.0.0.1:0",
        "tick": 0.25,
        "pollInterval": 30,
        "routerPorts": {RANKER: router_port},
        "webhookSecretFile": str(secret_file),
    }
    config.write_text(json.dumps(values | settings))
    return config, router_port


@pytest.fixture
def cleanup(tmp_path: Path) -> Iterator[list[Controller]]:
    """Controllers a test started, then whatever still runs under tmp_path (the
    releases and the router a stopped or killed controller leaves for the next one):
    the controllers go first, or they would restart them."""
    started: list[Controller] = []
    yield started
    for controller in started:
        if controller.proc is not None and controller.proc.poll() is None:
            controller.proc.kill()
            controller.proc.wait(timeout=10)
    # releases (their environment names tmp_path) and routers (their command line)
    for pid in {*bentoml_processes(tmp_path), *bentoml_processes(tmp_path, "cmdline")}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Controller:
    """``mdc run`` as a separate process, as an operator runs it."""

    def __init__(self, config: Path, log: Path, env: dict[str, str]) -> None:
        self.config, self.log, self.env = config, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        before = self._served()
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(self.config)],
            stdout=out,
            stderr=out,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        return str(wait_for(lambda: self._served() > before and self.url(), 30, "controller up"))

    def _served(self) -> int:
        if not self.log.exists():
            return 0
        return self.log.read_text().count("mdc run: serving ")

    def url(self) -> str:
        for line in reversed(self.log.read_text().splitlines()):
            if "mdc run: serving " in line:
                return line.split("serving ", 1)[1].split("/ ", 1)[0]
        return ""

    def status(self, model: str) -> dict[str, Any] | None:
        rows = httpx.get(self.url() + "/api/status", timeout=5).json()["models"]
        return next((r for r in rows if r["model"] == model), None)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)
