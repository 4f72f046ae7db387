"""How the local runtime learns a release's port: the server binds port 0 itself
and the runtime reads the port from /proc (never bind-and-release, which races
another process for the port). Plain Python processes stand in for a release
here; tests/integration/test_runtime.py checks the same with real bentos."""

from __future__ import annotations

import ast
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from controller.adapters.runtime import local
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.adapters.runtime.local import LocalRuntime, listening_port
from tests.bentos import bentoml_processes

pytestmark = pytest.mark.integration

# A stand-in for `bentoml serve`: an arbiter with a socket of its own (like
# circus's ZMQ endpoints) and a listening socket a forked worker inherits.
SERVER = """
import os, socket, sys, time
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen()
api = socket.socket(socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET)
api.bind(("::ffff:127.0.0.1" if sys.argv[1] == "6" else "127.0.0.1", 0))
api.listen()
if sys.argv[2] == "fork" and os.fork() == 0:
    own.close()
    time.sleep(600)
    os._exit(0)
print(own.getsockname()[1], api.getsockname()[1], flush=True)
time.sleep(600)
"""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    yield home
    for pid in bentoml_processes(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def serve(home: Path, family: str, fork: bool = True) -> tuple[subprocess.Popen[str], int, int]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, family, "fork" if fork else "alone"],
        env={**os.environ, "BENTOML_HOME": str(home)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert server.stdout is not None
    own, api = map(int, server.stdout.readline().split())
    return server, own, api


@pytest.mark.parametrize("family", ["4", "6"])
def test_the_port_is_the_one_the_workers_inherited(home: Path, family: str) -> None:
    server, own, api = serve(home, family)
    try:
        deadline = time.monotonic() + 10
        while len(psutil.Process(server.pid).children()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # until the worker has closed what it must not keep (a fork shares every
        # socket for a moment: failed once in CI), the arbiter's port can tie
        while listening_port(home) != api and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listening_port(home) == api
        assert own != api
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.communicate()
    assert listening_port(home) is None  # nothing of the release runs


def test_no_port_before_a_worker_holds_the_socket(home: Path) -> None:
    """The arbiter alone: its own sockets are never taken for the release's."""
    server, _, _ = serve(home, "4", fork=False)
    try:
        assert listening_port(home) is None
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.communicate()


def test_no_port_while_nothing_listens(home: Path) -> None:
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, "BENTOML_HOME": str(home)},
    )
    try:
        with socket.socket() as unrelated:  # a listener of this process, not the release's
            unrelated.bind(("127.0.0.1", 0))
            unrelated.listen()
            assert listening_port(home) is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_no_port_is_chosen_by_bind_and_release() -> None:
    """The race this module had: bind port 0, close, hand the number to the server."""
    assert not hasattr(local, "free_port")
    tree = ast.parse(Path(local.__file__).read_text())
    binds = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("bind", "getsockname")
    ]
    assert binds == []


@pytest.mark.parametrize(("port", "state"), [(None, State.CRASHED), (4099, State.FAILED)])
def test_address_in_use_fails_a_release_only_on_the_port_its_spec_named(
    tmp_path: Path, port: int | None, state: State
) -> None:
    """With port 0 the kernel picks the server's port, so an "in use" is a crash
    (BentoML's own ZMQ ports are picked by bind-and-release) and is restarted."""
    server = tmp_path / "server"
    server.write_text("#!/bin/sh\necho 'OSError: [Errno 98] Address already in use'\nexit 1\n")
    server.chmod(0o755)
    runtime = LocalRuntime(
        tmp_path / "state", tmp_path / "bentos", python=str(server), rng=random.Random(0)
    )
    runtime.start(ReleaseSpec("m/stable", "m", "1", "m:1", port=port))
    release = runtime.wait_ready("m/stable", 10)
    assert release.state is state
    assert ("port 4099 is taken" in release.reason) is (port is not None)


# A server caught mid-fork: for a moment its worker holds every socket of the
# arbiter (as a fork does before exec closes what is not inherited), so the
# arbiter's own port, the lower one here, looks shared as well; then the worker
# keeps only the API socket and answers on it.
MID_FORK = """
import http.server, os, socket, time
a, b = socket.socket(), socket.socket()
for s in (a, b):
    s.bind(("127.0.0.1", 0))
    s.listen()
own, api = sorted((a, b), key=lambda s: s.getsockname()[1])
if os.fork() == 0:
    time.sleep(1.5)
    own.close()

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok, bind_and_activate=False)
    server.socket.close()
    server.socket = api
    server.serve_forever()
time.sleep(600)
"""


def test_a_port_learned_mid_fork_is_learned_again_until_the_release_answers(
    tmp_path: Path,
) -> None:
    """Found in CI: three releases starting at once, one learned an arbiter port
    that no worker held a moment later and was failed after 60 s of silence."""
    server = tmp_path / "server"
    server.write_text(f"#!{sys.executable}\n{MID_FORK}")
    server.chmod(0o755)
    runtime = LocalRuntime(
        tmp_path / "state", tmp_path / "bentos", python=str(server), rng=random.Random(0)
    )
    spec = ReleaseSpec("m/stable", "m", "1", "m:1", ready_timeout=8)
    runtime.start(spec)
    try:
        release = runtime.wait_ready("m/stable", 12)
        assert release.state is State.READY, release.reason
        assert listening_port(runtime.home("m/stable")) == release.port
    finally:
        runtime.stop("m/stable", drain=0)
