"""Requests failed while the control plane moves: the controller killed with
SIGKILL and restarted, each promotion, and steady minutes -- under steady
traffic, with ``mdc run`` as a user runs it (a subprocess of the installed CLI).

Setup: the example spec repository as a bare repository on disk, ``mdc run
--repo BARE --config mdc.yaml`` (``routerPorts`` fixed, so an in-process router
can come back on the same port), both example models deployed. Traffic: one
keep-alive client per model at :data:`RATE` requests/s through the model's
endpoint; a failure is a transport error or any answer that is not 200.

Phases, each counted on its own window:

* ``kill -9``: the controller is killed with SIGKILL, stays down
  :data:`DOWN_SECONDS`, is started again, and the window ends
  :data:`AFTER_SECONDS` after it answers ``/readyz``;
* ``promotion``: a commit bumps ``search-ranker`` (artifacts v1/v2 in turn); the
  window runs from the push until :data:`AFTER_SECONDS` after the model is
  Healthy on the new version (canary at 20 %, 60 %, promotion, old stable
  drained and stopped);
* ``steady``: ``--steady`` seconds (default 600) with nothing changing.

Baseline in the same run: the ``kill -9`` phase once more with the router in
the controller's process (as before the router had a process of its own: the
wiring's router replaced by an in-process :class:`EmbeddedRouter`), and, in the
steady phase, a client calling ``search-ranker``'s stable release directly
(failures of the backend itself, which the router cannot hide).

Run: ``.venv/bin/python bench/bench_dataplane.py [--steady 600] [--promotions 2]``.
Prints figures; asserts nothing. Needs git; no network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.demo import _bump  # noqa: E402
from tests.gitservers import free_port  # noqa: E402

RATE = 50.0
DOWN_SECONDS = 3.0
AFTER_SECONDS = 5.0
RANKER = "search-ranker"
REQUESTS = {
    "fraud-scorer": ("/score", {"transactions": [{"amount_log": 1.0}]}),
    RANKER: (
        "/rank",
        {"documents": [{"id": "a", "bm25": 0.5, "click_rate": 0.2, "freshness": 0.7}]},
    ),
}
#: ``mdc run`` with the router in its own process: what users run.
SUPERVISED = [sys.executable, "-m", "controller", "run"]
#: The baseline: the same, with the router inside the controller's process.
IN_PROCESS = [
    sys.executable,
    "-c",
    "import sys; import controller.app.wiring as w; "
    "from controller.adapters.router.embedded import EmbeddedRouter; "
    "w.make_router = lambda kind, state_dir=None: EmbeddedRouter(); "
    "from controller.cli.main import main; sys.exit(main(['run', *sys.argv[1:]]))",
]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


class Load:
    """Steady requests to one URL from a thread; failures by time."""

    def __init__(self, url: str, body: dict[str, Any], rate: float = RATE) -> None:
        self.url, self.body, self.rate = url, body, rate
        self.sent: list[float] = []
        self.failed: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                why = ""
                try:
                    answer = client.post(self.url, json=self.body)
                    if answer.status_code != 200:
                        why = f"{answer.status_code} {answer.text[:80]}"
                except httpx.HTTPError as exc:
                    why = f"{type(exc).__name__}: {exc}"
                now = time.time()
                with self.lock:
                    self.sent.append(now)
                    if why:
                        self.failed.append((now, why))
                self._stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))

    def window(self, since: float, until: float) -> tuple[int, list[str]]:
        with self.lock:
            sent = sum(1 for t in self.sent if since <= t < until)
            failed = [why for t, why in self.failed if since <= t < until]
        return sent, failed

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=15)


class Controller:
    """``mdc run`` as a subprocess, killed and started again at will."""

    def __init__(self, command: list[str], config: Path, log: Path) -> None:
        self.command, self.config, self.log = command, config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [*self.command, "--config", str(self.config)],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            cwd=self.config.parent,
        )
        out.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the controller did not get ready; see {self.log}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def models(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(f"{self.url}/api/status", timeout=5).json()["models"]
        return {r["model"]: r for r in rows}

    def wait(self, model: str, phase: str, version: str | None, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                row = self.models()[model]
                if row["phase"] == phase and (version is None or row["stable"] == version):
                    return time.time()
            time.sleep(0.2)
        raise RuntimeError(f"{model} not {phase} {version or ''} in {timeout:.0f}s; see {self.log}")


def workspace(base: Path, ports: dict[str, int], listen: int) -> tuple[Path, Path, Path]:
    """The example repo as a working copy and a bare remote, and mdc.yaml."""
    work = base / "work"
    shutil.copytree(ROOT / "example-repo", work)
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qm", "specs", cwd=work)
    bare = base / "models.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=base)
    git("remote", "add", "origin", str(bare), cwd=work)
    config = base / "mdc.yaml"
    config.write_text(
        json.dumps(
            {
                "repo": str(bare),
                "stateDir": str(base / "state"),
                "pollInterval": 1,
                "tick": 0.25,
                "listen": f"127.0.0.1:{listen}",
                "routerPorts": ports,
            }
        )
    )
    return work, bare, config


def bump(work: Path, version: str, artifact: str) -> None:
    _bump(version, artifact)(work)  # the demo's edit: search-ranker's version and artifact
    git("-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qam", version, cwd=work)
    git("push", "-q", "origin", "main", cwd=work)


def cleanup(base: Path) -> None:
    """Every process whose command line or environment names ``base``."""
    wanted = str(base).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            if wanted in text:
                os.kill(int(entry.name), signal.SIGKILL)


def line(label: str, sent: int, failed: list[str]) -> str:
    why = f"  e.g. {failed[0]}" if failed else ""
    return f"  {label:<50} {sent:>7} {len(failed):>7}{why}"


class Deployment:
    """The example repo deployed by ``command`` under traffic; torn down on exit."""

    def __init__(self, command: list[str]) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mdc-bench-dp-"))
        self.ports = {"fraud-scorer": free_port(), RANKER: free_port()}
        listen = free_port()
        self.work, _, config = workspace(self.base, self.ports, listen)
        self.controller = Controller(command, config, self.base / "controller.log")
        self.controller.url = f"http://127.0.0.1:{listen}"
        self.loads: list[Load] = []

    def __enter__(self) -> Deployment:
        self.controller.start()
        for model in REQUESTS:
            self.controller.wait(model, "Healthy", None, 300)
        self.loads = [
            Load(f"http://127.0.0.1:{self.ports[m]}{path}", body)
            for m, (path, body) in REQUESTS.items()
        ]
        time.sleep(3)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for load in self.loads:
            load.stop()
        self.controller.stop()
        cleanup(self.base)
        shutil.rmtree(self.base, ignore_errors=True)

    def window(self, since: float, until: float) -> tuple[int, list[str]]:
        sent, failed = 0, []
        for load in self.loads:
            n, bad = load.window(since, until)
            sent, failed = sent + n, failed + bad
        return sent, failed

    def kills(self, label: str, rounds: int) -> None:
        """Kill -9 and restart the controller ``rounds`` times; a row each."""
        for i in range(rounds):
            since = time.time()
            self.controller.kill()
            time.sleep(DOWN_SECONDS)
            self.controller.start()
            time.sleep(AFTER_SECONDS)
            until = time.time()
            print(
                line(
                    f"{label}, kill -9 #{i + 1} ({until - since:.0f}s)", *self.window(since, until)
                ),
                flush=True,
            )

    def promotions(self, rounds: int) -> None:
        for i in range(rounds):
            version = f"2026.12.{i + 2}"
            since = time.time()
            bump(self.work, version, "v2.json" if i % 2 == 0 else "v1.json")
            done = self.controller.wait(RANKER, "Healthy", version, 300)
            time.sleep(AFTER_SECONDS)
            label = f"promotion #{i + 1} ({done - since:.0f}s to Healthy)"
            print(line(label, *self.window(since, time.time())), flush=True)

    def steady(self, seconds: float) -> None:
        """``seconds`` of nothing changing; beside it, the ranker's release called directly."""
        table = self.base / "state" / "runtime" / "releases.json"
        running = [
            r
            for r in json.loads(table.read_text())
            if r["spec"]["name"].startswith(f"{RANKER}/") and r["state"] == "ready"
        ]
        path, body = REQUESTS[RANKER]
        direct = Load(f"http://127.0.0.1:{running[-1]['port']}{path}", body) if running else None
        since = time.time()
        time.sleep(seconds)
        until = time.time()
        print(line(f"steady {seconds:.0f}s through the router", *self.window(since, until)))
        if direct is not None:
            print(line(f"baseline: steady, {RANKER} release direct", *direct.window(since, until)))
            direct.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steady", type=float, default=600.0, help="steady seconds")
    parser.add_argument("--promotions", type=int, default=2)
    parser.add_argument("--kills", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    print(f"traffic: {RATE:.0f} requests/s to each of {len(REQUESTS)} models, keep-alive")
    print(f"  {'phase':<50} {'sent':>7} {'failed':>7}")
    with Deployment(IN_PROCESS) as baseline:
        baseline.kills("baseline: router in the controller", args.kills)
    with Deployment(SUPERVISED) as deployed:
        deployed.kills("router process", args.kills)
        deployed.promotions(args.promotions)
        deployed.steady(args.steady)
    return 0


if __name__ == "__main__":
    sys.exit(main())
