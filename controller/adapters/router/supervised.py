"""The embedded router in a process of its own, as the controller sees it: the
default router of ``mdc run``.

Owns finding the router process of a state directory (``STATE/router/router.json``:
its pid and control URL) and adopting it when it still answers, else starting
one (``python -m controller.adapters.router.control``, in a session of its own, so
neither a Ctrl-C in the controller's terminal nor the controller's death reaches
it); every :class:`~controller.adapters.router.base.Router` call as a request to
its control API (:mod:`controller.adapters.router.control`) with the bearer token
from ``STATE/router/token``; and supervision: a call that finds the process gone
starts a new one -- which serves the routes of its table on the same ports before
it answers -- and is made again, once.

:meth:`SupervisedRouter.close` lets go of the process and leaves it serving (the
next controller adopts it); :meth:`SupervisedRouter.shutdown` stops it, after
the requests in flight are answered. Built by
:func:`controller.adapters.router.make_router`; called by the reconciler, the
rollout driver and the daemon (``/metrics``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from controller.adapters.router.control import (
    config_to_json,
    pair_from_json,
    pairing_to_json,
    sample_from_json,
    sampling_to_json,
    stats_from_json,
)
from controller.core.environment import without_secrets
from controller.core.traffic import (
    BackendStats,
    Pair,
    PairingConfig,
    RouteConfig,
    Sample,
    SamplingConfig,
)
from controller.errors import TransientError

__all__ = ["SupervisedRouter", "process_alive"]

log = logging.getLogger(__name__)

START_SECONDS = 20.0
STOP_SECONDS = 15.0


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class SupervisedRouter:
    """The router process of ``state_dir`` (see the module docstring)."""

    def __init__(self, state_dir: Path, *, python: str = sys.executable) -> None:
        self.dir = Path(state_dir) / "router"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.http = httpx.Client(timeout=10.0, trust_env=False)
        self.pid = 0
        self.control = ""
        self.admin_url = ""
        self.adopted = False  # whether this controller found the process running
        self.restarts = 0
        self._adopt()  # else started by the first route: no routes, no process

    # -- the process --------------------------------------------------------------

    def _info(self) -> dict[str, Any] | None:
        try:
            info = json.loads((self.dir / "router.json").read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def _headers(self) -> dict[str, str]:
        token = (self.dir / "token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def _answers(self, info: dict[str, Any]) -> bool:
        try:
            pid = int(info["pid"])
            if not process_alive(pid):
                return False
            answer = self.http.get(f"{info['control']}/healthz", timeout=2.0)
            return answer.status_code == 200 and answer.json().get("pid") == pid
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False

    def _take(self, info: dict[str, Any]) -> None:
        self.pid, self.control = int(info["pid"]), str(info["control"])
        self.admin_url = str(info.get("admin") or "")

    def _adopt(self) -> bool:
        info = self._info()
        if info is None or not self._answers(info):
            return False
        self._take(info)
        self.adopted = True
        log.info("router: adopted pid %d (%s)", self.pid, self.control)
        return True

    def _start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "router.json").unlink()
        out = (self.dir / "router.out").open("ab")
        try:
            launcher = subprocess.run(
                [
                    self.python,
                    "-m",
                    "controller.adapters.router.control",
                    "--dir",
                    str(self.dir.resolve()),
                    "--detach",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=without_secrets(os.environ),
                cwd=self.dir,
                timeout=START_SECONDS,
                check=False,
            )
        finally:
            out.close()
        deadline = time.monotonic() + START_SECONDS
        while launcher.returncode == 0 and time.monotonic() < deadline:
            info = self._info()  # removed above: whatever appears is the new router's
            if info is not None and self._answers(info):
                self._take(info)
                log.info("router: started pid %d (%s)", self.pid, self.control)
                return
            if info is not None and not process_alive(int(info.get("pid", 0))):
                break
            time.sleep(0.05)
        tail = (self.dir / "router.out").read_bytes()[-2000:].decode(errors="replace")
        raise TransientError(
            f"the router process did not start (see {self.dir / 'router.out'}): {tail.strip()}",
            retry_after=5.0,
        )

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """One control call; a router found gone is started again and asked once more."""
        if not self.pid:
            if method == "GET" or path.endswith(("/samples", "/pairs")):  # nothing to read
                raise KeyError(path)
            self._start()
        for attempt in (0, 1):
            try:
                answer = self.http.request(
                    method,
                    f"{self.control}{path}",
                    content=None if body is None and method == "GET" else json.dumps(body),
                    headers=self._headers(),
                )
            except httpx.TransportError as exc:
                if attempt == 1 or self._answers({"pid": self.pid, "control": self.control}):
                    raise TransientError(
                        f"the router (pid {self.pid}) did not answer: {exc}", retry_after=2.0
                    ) from None
                self.restarts += 1
                log.warning("router: pid %d is gone; starting it again", self.pid)
                self._start()
                continue
            if answer.status_code == 409:
                raise OSError(answer.json().get("error", "the port is taken"))
            if answer.status_code == 404:
                raise KeyError(answer.json().get("error", path))
            answer.raise_for_status()
            if answer.headers.get("content-type", "").startswith("application/json"):
                return answer.json()
            return answer.text
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the Router protocol --------------------------------------------------------

    def add_model(self, model: str, port: int = 0) -> str:
        return str(self._call("PUT", f"/routes/{model}", {"port": port})["url"])

    def configure(self, model: str, config: RouteConfig) -> None:
        if not all(0 <= p <= 100 for p in (config.weight, config.mirror, config.preview_share)):
            raise ValueError(f"weight, mirror and preview_share are percentages: {config}")
        self._call("PUT", f"/routes/{model}/config", config_to_json(config))

    def snapshot(self, model: str) -> dict[str, BackendStats]:
        data = self._call("GET", f"/routes/{model}/stats")
        return {backend: stats_from_json(s) for backend, s in data.items()}

    def sample(self, model: str, config: SamplingConfig | None) -> None:
        self._call("PUT", f"/routes/{model}/sampling", sampling_to_json(config))

    def samples(self, model: str) -> list[Sample]:
        try:
            data = self._call("POST", f"/routes/{model}/samples", {})
        except KeyError:
            return []
        return [sample_from_json(s) for s in data]

    def pair(self, model: str, config: PairingConfig | None) -> None:
        self._call("PUT", f"/routes/{model}/pairing", pairing_to_json(config))

    def pairs(self, model: str) -> list[Pair]:
        try:
            data = self._call("POST", f"/routes/{model}/pairs", {})
        except KeyError:
            return []
        return [pair_from_json(p) for p in data]

    def in_flight(self, model: str) -> dict[str, int]:
        return {k: int(v) for k, v in self._call("GET", f"/routes/{model}/in-flight").items()}

    def waiting(self, model: str) -> dict[str, float]:
        return {k: float(v) for k, v in self._call("GET", f"/routes/{model}/waiting").items()}

    def routes(self) -> dict[str, str]:
        """Each open route's URL, by model."""
        if not self.pid:
            return {}
        return {m: str(r["url"]) for m, r in self._call("GET", "/routes").items()}

    def metrics_text(self) -> str:
        return str(self._call("GET", "/metrics")) if self.pid else ""

    def close(self) -> None:
        """Let go of the router: it keeps serving, and the next controller adopts it."""
        self.http.close()

    def shutdown(self) -> None:
        """Stop the router process (after the requests in flight are answered)."""
        if self.pid and process_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_SECONDS
            while process_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if process_alive(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        self.http.close()
