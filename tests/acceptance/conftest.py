"""What the acceptance tests share: a user's fresh working directory with a copy of
the example spec repository (:class:`Workspace`), ``mdc`` run there as the installed
console script (:meth:`Workspace.mdc`), ``mdc run`` as a long-lived process
(:class:`Controller`), steady traffic to an endpoint (:class:`Traffic`), the
example models' real requests (:func:`ask`) and :func:`wait_for`.

Nothing here passes a flag the README does not show: the state directory is the
default ``.mdc-state`` in the working directory. Every process a workspace's
commands start is gone when it closes: controllers first (or they would restart
what is stopped), then ``mdc down``, then whatever still mentions the workspace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from controller.demo import _bump
from tests.bentos import bentoml_processes
from tests.conftest import EXAMPLE_REPO
from tests.gitservers import git_env, run_git

#: The installed console script, as a user runs it.
MDC = Path(sys.executable).parent / "mdc"
MODELS = ("fraud-scorer", "search-ranker")
RANKER = "search-ranker"
SCORER = "fraud-scorer"

#: The request each example model answers (example-repo/services/*.py).
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    SCORER: ("/score", {"transactions": [{"amount_log": 1.0}, {"amount_log": 5.0, "hour": 3}]}),
    RANKER: (
        "/rank",
        {
            "documents": [
                {"id": "old", "bm25": 0.1, "click_rate": 0.2, "freshness": 0.3},
                {"id": "new", "bm25": 0.9, "click_rate": 0.8, "freshness": 0.7},
            ]
        },
    ),
}


def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 0.25,
    detail: Callable[[], str] | None = None,
) -> Any:
    """``check()``'s first truthy value within ``timeout`` seconds (an HTTP error or
    a missing key counts as not yet), else an AssertionError naming ``what`` (and
    ``detail()``: a controller's log, say)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, ValueError, StopIteration) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    message = f"not within {timeout:.0f}s: {what} (last seen: {last!r})"
    raise AssertionError(message + (f"\n{detail()}" if detail is not None else ""))


def ask(model: str, endpoint: str, client: httpx.Client | None = None) -> Any:
    """Send ``model`` its real request at ``endpoint``; the answer, checked for the
    shape the example service gives (an AssertionError otherwise)."""
    path, body = REQUESTS[model]
    if client is None:
        answer = httpx.post(endpoint + path, json=body, timeout=10)
    else:
        answer = client.post(endpoint + path, json=body)
    assert answer.status_code == 200, (endpoint + path, answer.status_code, answer.text[:300])
    data = answer.json()
    if model == SCORER:  # one fraud probability per transaction
        assert isinstance(data, list), data
        assert len(data) == 2, data
        assert all(0.0 < p < 1.0 for p in data), data
    else:  # the documents with a score, best first
        assert [d["id"] for d in data] == ["new", "old"], data
        assert data[0]["score"] > data[1]["score"], data
    return data


def mdc_env(cwd: Path) -> dict[str, str]:
    """The user's environment in ``cwd``: no BentoML home or mdc settings of the
    caller's, telemetry off, and ``PWD`` as a shell sets it (which is also how the
    processes mdc starts are found again: they inherit it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDC_", "BENTOML_", "GIT_"))}
    env.update({"BENTOML_DO_NOT_TRACK": "true", "PWD": str(cwd), "NO_COLOR": "1"})
    return env


@dataclass
class Controller:
    """``mdc run ARGS`` started in a workspace, its stdout and stderr in files."""

    cwd: Path
    args: tuple[str, ...]
    out: Path
    err: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self, timeout: float = 60) -> Self:
        with self.out.open("ab") as out, self.err.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(MDC), "run", *self.args],
                cwd=self.cwd,
                env=mdc_env(self.cwd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.started_at = time.monotonic()
        wait_for(lambda: self.url or self.proc_ended(), timeout, f"mdc run serving ({self.err})")
        assert self.url, f"mdc run ended with {self.proc.returncode}:\n{self.log()[-3000:]}"
        return self

    def proc_ended(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def lines(self) -> list[str]:
        return self.log().splitlines()

    def excerpt(self, count: int = 30) -> str:
        """The log's last ``count`` lines that matter to a user (``mdc run:``
        lines, warnings, errors and tracebacks), for a failure's message."""
        wanted = ("mdc run:", "Traceback", "Error", " WARNING ", " ERROR ")
        kept = [line[:300] for line in self.lines() if any(w in line for w in wanted)]
        return f"{self.err}:\n" + "\n".join(kept[-count:])

    @property
    def url(self) -> str:
        """The controller's URL from ``mdc run: serving URL/ …`` ('' until then)."""
        for line in self.lines():
            if line.startswith("mdc run: serving "):
                return line.split("serving ", 1)[1].split("/ ", 1)[0]
        return ""

    def routed(self) -> dict[str, str]:
        """Each model's URL, from ``mdc run: NAME: routed at URL`` (the last one)."""
        found: dict[str, str] = {}
        for line in self.lines():
            if line.startswith("mdc run: ") and ": routed at " in line:
                name, url = line.removeprefix("mdc run: ").split(": routed at ", 1)
                found[name] = url.strip()
        return found

    def api_status(self) -> dict[str, dict[str, Any]]:
        """``/api/status``'s rows by model (what ``mdc status --format json`` prints)."""
        rows = httpx.get(self.url + "/api/status", timeout=5).json()["models"]
        return {row["model"]: row for row in rows}

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as an operator stops it; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


class Workspace:
    """A user's fresh directory (``root/ws``, the cwd of every command) holding a
    copy of the example spec repository as a git working copy on branch ``main``.
    Logs of controllers go to ``root/logs``, outside it. A context manager: on exit
    every process its commands started is stopped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root / "ws"
        self.logs = root / "logs"
        self.cwd.mkdir(parents=True)
        self.logs.mkdir()
        self.work = self.cwd / "example-repo"
        shutil.copytree(EXAMPLE_REPO, self.work)
        self.git = git_env()
        run_git("init", "-q", "-b", "main", cwd=self.work, env=self.git)
        run_git("add", "-A", cwd=self.work, env=self.git)
        run_git("commit", "-q", "-m", "the example repository", cwd=self.work, env=self.git)
        self.controllers: list[Controller] = []

    @property
    def state(self) -> Path:
        return self.cwd / ".mdc-state"

    def bare_clone(self, dest: Path) -> Path:
        """``git clone --bare example-repo DEST``, made the working copy's origin."""
        run_git("clone", "-q", "--bare", self.work, dest, cwd=self.cwd, env=self.git)
        run_git("remote", "add", "origin", dest, cwd=self.work, env=self.git)
        return dest

    def push(self, message: str, edit: Callable[[Path], None]) -> str:
        """Edit the working copy, commit and push to origin; the new commit."""
        edit(self.work)
        run_git("commit", "-q", "-a", "-m", message, cwd=self.work, env=self.git)
        run_git("push", "-q", "origin", "main", cwd=self.work, env=self.git)
        return run_git("rev-parse", "HEAD", cwd=self.work, env=self.git).stdout.strip()

    def mdc(
        self, *args: str, timeout: float = 120, stdin: int | None = subprocess.DEVNULL
    ) -> subprocess.CompletedProcess[str]:
        """``mdc ARGS`` in the workspace, as a user types it; output captured."""
        return subprocess.run(
            [str(MDC), *args],
            cwd=self.cwd,
            env=mdc_env(self.cwd),
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def mdc_closed_stdout(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``mdc ARGS`` with a stdout whose reader is gone before a byte is written."""
        read, write = os.pipe()
        os.close(read)
        try:
            return subprocess.run(
                [str(MDC), *args],
                cwd=self.cwd,
                env=mdc_env(self.cwd),
                stdin=subprocess.DEVNULL,
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            os.close(write)

    def controller(self, *args: str) -> Controller:
        """``mdc run ARGS``, started; its log in ``logs/run-N.err``."""
        n = len(self.controllers) + 1
        ctl = Controller(self.cwd, args, self.logs / f"run-{n}.out", self.logs / f"run-{n}.err")
        self.controllers.append(ctl)
        return ctl.start()

    def releases(self, model: str | None = None) -> dict[str, int]:
        """The live releases in the process table (``STATE/runtime/releases.json``,
        which the README names): pid by release name."""
        path = self.state / "runtime" / "releases.json"
        table = json.loads(path.read_text()) if path.exists() else []
        return {
            r["spec"]["name"]: int(r["pid"])
            for r in table
            if r.get("pid")
            and r["state"] not in ("stopped", "failed")
            and (model is None or r["spec"]["model"] == model)
        }

    def leftovers(self) -> list[int]:
        """Processes whose environment or command line mentions the workspace."""
        return sorted({*bentoml_processes(self.root), *bentoml_processes(self.root, "cmdline")})

    def close(self) -> None:
        for ctl in self.controllers:
            if ctl.running:
                assert ctl.proc is not None
                ctl.proc.kill()
                ctl.proc.wait(timeout=10)
        if self.state.is_dir():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.mdc("down", timeout=60)
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def bump_ranker(version: str, artifact: str) -> Callable[[Path], None]:
    """An edit of search-ranker's spec only: a new ``version`` and artifact file, as
    the example repository's README says a new version is released (the demo's)."""
    return _bump(version, artifact)


@dataclass
class Traffic:
    """A thread sending ``model``'s request to ``endpoint`` at about ``rate`` per
    second on one kept-alive connection; every answer is timed and a failure (a
    transport error or a status other than 2xx) kept with what it was."""

    model: str
    endpoint: str
    rate: float = 50.0
    ok: list[float] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=f"traffic-{self.model}")
        self._thread.start()
        wait_for(lambda: self.ok or self.failures, 10, f"traffic to {self.endpoint} answered")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        path, body = REQUESTS[self.model]
        gap = 1.0 / self.rate
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    answer = client.post(self.endpoint + path, json=body)
                except httpx.HTTPError as exc:
                    self.failures.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
                else:
                    if 200 <= answer.status_code < 300:
                        self.ok.append(time.monotonic())
                    else:
                        what = f"{answer.status_code} {answer.text[:200]}"
                        self.failures.append((time.monotonic(), what))
                self._stop.wait(max(0.0, gap - (time.monotonic() - began)))

    def ok_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.ok if start <= t <= end)

    def failed_between(self, start: float, end: float) -> list[tuple[float, str]]:
        return [f for f in self.failures if start <= f[0] <= end]
