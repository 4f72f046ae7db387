"""A real MLflow tracking server for tests: ``mlflow server`` with a sqlite
backend and a local artifact root, on loopback, started and stopped by the
test; and the example repository's iris-classifier registered in it by its own
training script, as a data scientist would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

__all__ = ["TRAIN", "MlflowServer", "free_port"]

TRAIN = Path(__file__).resolve().parents[1] / "example-repo/artifacts/iris-classifier/train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env["GIT_PYTHON_REFRESH"] = "quiet"
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner (10 huey workers)
    return env


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with its data under ``root``; :meth:`stop`
    and :meth:`start` again keep the data and the port (a registry outage)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> MlflowServer:
        mlflow = Path(sys.executable).with_name("mlflow")
        with (self.root / "server.log").open("ab") as log:
            self.proc = self._spawn(str(mlflow), log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not up in {timeout:g}s: {self.log_tail()}")

    def _spawn(self, mlflow: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                mlflow,
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_quiet_env(),
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def log_tail(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def register(self, *releases: int, alias: str | None = None) -> list[dict[str, str]]:
        """Train and register releases of the iris-classifier with the example
        repository's script (one process): ``[{"version": ..., "run_id": ...}]``;
        ``alias`` points at the last."""
        argv = [sys.executable, str(TRAIN), "--tracking-uri", self.url]
        for release in releases:
            argv += ["--release", str(release)]
        if alias:
            argv += ["--alias", alias]
        done = subprocess.run(
            argv, capture_output=True, text=True, env=_quiet_env(), timeout=240, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"train.py failed: {done.stderr[-2000:]}")
        # MLflow prints its own lines ("View run ...") between the script's JSON lines
        lines = [line for line in done.stdout.splitlines() if line.startswith('{"version"')]
        return [dict(json.loads(line)) for line in lines]

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
