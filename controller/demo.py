"""``mdc demo``: a team's week with mdc, on one machine, in a few minutes.

Owns :class:`Demo` -- a workspace with the example spec repository served by a
real ``git daemon`` on loopback, a local fake of GitHub's REST API (GitHub
cannot be reached here), and a controller (the real reconciler, embedded
router and local runtime) -- and the story :func:`run_demo` tells with it:

1. the models are deployed from git;
2. a pull request bumps ``search-ranker``: its plan is posted on the PR, it is
   merged, and the canary walks its steps under generated traffic (the split
   is measured from the answers) and is promoted;
3. a second pull request brings a version that fails on a third of real
   requests: its canary is rolled back within one analysis interval, the spec
   is pinned, and a revert PR is opened;
4. ``mdc status``, the status branch's ``git log`` and ``mdc history`` are
   printed, with the URLs to poke at.

Every process it starts is stopped at the end, on an error and on Ctrl-C.
The end-to-end tests drive the same :class:`Demo` and assert on each step.
Called by ``mdc demo`` (``make demo``) and ``tests/e2e``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from controller.adapters.github.client import GitHubReporter
from controller.app.daemon import Config, Daemon
from controller.app.reconciler import PassResult, Reconciler
from controller.app.reporting import PullRequests, Reporter
from controller.app.wiring import build_controller
from controller.core.status import ModelStatus, Phase
from controller.demo_previews import previews_on, show_preview, tell_handover
from controller.demo_registry import (
    MlflowServer,
    available,
    onboard,
    registry_chapter,
    train_script,
)
from controller.testing import FakeGitHub

__all__ = ["Demo", "Traffic", "git", "run_demo"]


def _example_repo() -> Path:
    """The example spec repository: inside the package when installed from a wheel
    (``controller/example-repo``), else at the root of the source checkout."""
    package = Path(__file__).resolve().parent
    shipped = package / "example-repo"
    return shipped if shipped.is_dir() else package.parent / "example-repo"


EXAMPLE_REPO = _example_repo()
RANKER = "search-ranker"
GITHUB_REPO = "acme/models"
TEAM = ("dana", "sam")  # a data scientist who opens PRs, a reviewer with write access


def git(*args: str | Path, cwd: Path | None = None, timeout: float = 60) -> str:
    """Run git with a fixed identity and no user configuration; its stdout."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Dana Scientist",
        "GIT_AUTHOR_EMAIL": "dana@example.com",
        "GIT_COMMITTER_NAME": "Dana Scientist",
        "GIT_COMMITTER_EMAIL": "dana@example.com",
        "GIT_TERMINAL_PROMPT": "0",
    }
    done = subprocess.run(
        ["git", *(str(a) for a in args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return done.stdout


class PortTaken(RuntimeError):
    """A server could not listen on the port it was given."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Traffic:
    """Requests to one model through the router, from a background thread: codes,
    and which version answered (``classify`` reads that from the answer)."""

    def __init__(
        self,
        url: str,
        request: Callable[[random.Random], dict[str, Any]],
        classify: Callable[[Any], str],
        rate: float = 40.0,
    ) -> None:
        self.url, self.request, self.classify, self.rate = url, request, classify, rate
        self.lock = threading.Lock()
        self.answers: list[tuple[float, int, str]] = []  # (when, code, version or "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mdc-demo-traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        rng = random.Random(7)
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    answer = client.post(self.url, json=self.request(rng))
                    version = self.classify(answer.json()) if answer.status_code == 200 else ""
                    code = answer.status_code
                except (httpx.HTTPError, ValueError):
                    code, version = 0, ""
                with self.lock:
                    self.answers.append((time.time(), code, version))
                self._stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))

    def window(self, since: float, until: float | None = None) -> dict[str, int]:
        """Answers between ``since`` and ``until``: per version, plus ``errors``."""
        out: dict[str, int] = {}
        with self.lock:
            for at, code, version in self.answers:
                if at >= since and (until is None or at < until):
                    key = version if code == 200 else "errors"
                    out[key] = out.get(key, 0) + 1
        return out


#: The document every demo request carries first: its score tells which version answered.
PROBE_DOC = {"id": "probe", "bm25": 0.5, "click_rate": 0.25, "freshness": 0.75, "dwell_time": 0.5}


def ranker_request(rng: random.Random) -> dict[str, Any]:
    """A search request: the marker document, then candidates; about a third of
    them come from the old indexer and carry no ``dwell_time``."""
    documents = [PROBE_DOC]
    for i in range(3):
        doc = {
            "id": f"d{i}",
            "bm25": round(rng.random(), 3),
            "click_rate": round(rng.random(), 3),
            "freshness": round(rng.random(), 3),
        }
        if rng.random() > 0.12:  # about 1 request in 3 has a document without it
            doc["dwell_time"] = round(rng.random(), 3)
        documents.append(doc)
    return {"documents": documents}


def version_classifier(repo: Path) -> Callable[[Any], str]:
    """Tells the search-ranker's versions apart by the score of :data:`PROBE_DOC`."""
    scores: dict[float, str] = {}
    for artifact in sorted((repo / "artifacts" / RANKER).glob("v*.json")):
        weights: dict[str, Any] = json.loads(artifact.read_text())
        score = sum(
            w * float(PROBE_DOC[name])  # type: ignore[arg-type]
            for name, w in zip(weights["features"], weights["weights"], strict=True)
        )
        scores[round(score, 4)] = artifact.stem

    def classify(answer: Any) -> str:
        for doc in answer:
            if doc.get("id") == "probe":
                return scores.get(round(float(doc["score"]), 4), "?")
        return "?"

    return classify


@dataclass
class Demo:
    """The demo's world; a context manager that stops everything it started."""

    base: Path
    out: TextIO = sys.stdout
    tick: float = 0.25
    poll_interval: float = 30.0  # the webhook brings changes; the poll is the fallback
    secret: bytes = field(default_factory=lambda: secrets.token_hex(16).encode())
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    github: FakeGitHub | None = None
    daemon: Daemon | None = None
    reconciler: Reconciler | None = None
    reporter: Reporter | None = None
    traffic: Traffic | None = None
    passes: list[PassResult] = field(default_factory=list)
    hook_url: str | None = None  # a controller run elsewhere (mdc run): its webhook URL
    clock: Callable[[], float] = time.time  # the controller's (tests move it on)
    mlflow_tracking_uri: str | None = None  # the registry the controller reads and tells
    _thread: threading.Thread | None = None
    _pull_numbers: dict[str, int] = field(default_factory=dict)

    # -- set-up ------------------------------------------------------------------------

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def served(self) -> Path:
        return self.base / "served"

    def say(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {text}", file=self.out, flush=True)

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def setup(self, prepare: Callable[[Path], None] | None = None) -> None:
        """The example repo (changed by ``prepare``, if given) as a git repository
        served by ``git daemon``; the fake GitHub."""
        self.base.mkdir(parents=True, exist_ok=True)
        shutil.copytree(EXAMPLE_REPO, self.work)
        if prepare is not None:
            prepare(self.work)
        git("init", "-q", "-b", "main", cwd=self.work)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", "Example models: fraud-scorer and search-ranker", cwd=self.work)
        self.served.mkdir()
        git("init", "-q", "--bare", "-b", "main", self.served / "models.git")
        for attempt in range(5):  # git daemon cannot take a bound socket: a port it
            self.git_port = _free_port()  # fails to bind (taken meanwhile) is tried anew
            try:
                self.start_git()
                break
            except PortTaken:
                if attempt == 4:
                    raise
        self.remote = f"git://127.0.0.1:{self.git_port}/models.git"
        git("push", "-q", self.remote, "main", cwd=self.work)
        self.github = FakeGitHub(GITHUB_REPO, token=secrets.token_hex(12)).start()
        self.github.permissions[TEAM[1]] = "write"
        self.github.permissions[TEAM[0]] = "read"
        self.say(f"spec repository served at {self.remote}; fake GitHub at {self.github.url}")

    def start_git(self) -> None:
        """Serve ``served/`` with ``git daemon`` on :attr:`git_port` (again after a stop)."""
        exec_path = git("--exec-path").strip()
        self.git_process = subprocess.Popen(
            [
                f"{exec_path}/git-daemon",
                "--export-all",
                "--enable=receive-pack",
                "--reuseaddr",
                "--listen=127.0.0.1",
                f"--port={self.git_port}",
                f"--base-path={self.served}",
                str(self.served),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.processes.append(self.git_process)
        url = f"git://127.0.0.1:{self.git_port}/models.git"
        for _ in range(200):
            if self.git_process.poll() is not None:  # it could not listen: the port is taken
                self.processes.remove(self.git_process)
                raise PortTaken(f"git daemon could not listen on port {self.git_port}")
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                git("ls-remote", url, timeout=2)  # a port someone else holds may never answer
                if self.git_process.poll() is None:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"git daemon did not start on port {self.git_port}")

    def stop_git(self) -> None:
        """Take the git server away (an outage)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.git_process.pid, 9)
        self.git_process.wait(timeout=10)
        self.processes.remove(self.git_process)

    def start_controller(self) -> None:
        assert self.github is not None
        state = self.base / "state"
        config = Config(
            repo=self.remote,
            branch="main",
            state_dir=state,
            poll_interval=self.poll_interval,
            tick=self.tick,
            listen="127.0.0.1:0",
            github_repository=GITHUB_REPO,
            github_api_url=self.github.url,
            revert_prs=True,
            mlflow_tracking_uri=self.mlflow_tracking_uri,
        )
        github = GitHubReporter(
            GITHUB_REPO, self.github.token, api_url=self.github.url, max_attempts=3, max_wait=10.0
        )
        reporter = PullRequests(github, branch="main", revert_prs=True)
        controller = build_controller(
            config, secret=self.secret, reporter=reporter, on_event=reporter, clock=self.clock
        )
        self.reconciler, self.daemon = controller.reconciler, controller.daemon
        self.reporter = controller.reporter  # GitHub off the loop, as mdc run reports
        self._thread = threading.Thread(
            target=self.daemon.run, kwargs={"on_pass": self.passes.append}, daemon=True
        )
        self._thread.start()
        for _ in range(100):
            with contextlib.suppress(RuntimeError):
                self.say(f"controller up: dashboard {self.daemon.url}/")
                return
            time.sleep(0.05)

    # -- acting out the week -----------------------------------------------------------

    def status(self, model: str) -> ModelStatus | None:
        assert self.reconciler is not None
        return self.reconciler.statuses.get(model)

    def wait_for(
        self,
        model: str,
        done: Callable[[ModelStatus], bool],
        timeout: float,
        show: bool = True,
    ) -> ModelStatus:
        """Wait until ``done(status)``; prints each change of phase, step and weight."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            status = self.status(model)
            if status is not None:
                line = f"{model}: {status.phase}"
                if status.step is not None and status.steps:
                    line += f", step {status.step}/{status.steps}, weight {status.weight}%"
                verdicts = [f"{v.check} {'ok' if v.passed else 'FAILED'}" for v in status.verdicts]
                if verdicts:
                    line += f" ({', '.join(verdicts)})"
                if line != last and show:
                    self.say(line)
                    last = line
                if done(status):
                    return status
            time.sleep(0.1)
        raise TimeoutError(f"{model} did not get there in {timeout:.0f}s: {self.status(model)}")

    def webhook(self, event: str, payload: dict[str, Any]) -> int:
        """Send ``event`` to the controller, signed, as GitHub would (about :data:`GITHUB_REPO`)."""
        url = self.hook_url or (self.daemon.server.url if self.daemon else None)
        assert url is not None, "no controller to send webhooks to"
        body = json.dumps({"repository": {"full_name": GITHUB_REPO}, **payload}).encode()
        signature = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        answer = httpx.post(
            url,
            content=body,
            headers={
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": secrets.token_hex(8),
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            },
            timeout=10,
        )
        return answer.status_code

    def open_pr(self, branch: str, title: str, edit: Callable[[Path], None]) -> int:
        """Commit ``edit`` on a new branch, push it, open a PR (webhook included)."""
        assert self.github is not None
        git("checkout", "-q", "-b", branch, "main", cwd=self.work)
        edit(self.work)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", title, cwd=self.work)
        git("push", "-q", self.remote, branch, cwd=self.work)
        head = git("rev-parse", "HEAD", cwd=self.work).strip()
        git("checkout", "-q", "main", cwd=self.work)
        pull = self.github.repo.add_pull(branch, title=title, user=TEAM[0], head_sha=head)
        self._pull_numbers[branch] = pull.number
        self.webhook(
            "pull_request",
            {
                "action": "opened",
                "number": pull.number,
                "pull_request": {
                    "number": pull.number,
                    "head": {"sha": head, "ref": branch},
                    "base": {"ref": "main"},
                },
                "sender": {"login": TEAM[0]},
            },
        )
        return pull.number

    def merge(self, branch: str, webhook: bool = True) -> str:
        """Merge the PR (a merge commit), push main, and tell the controller with a
        push webhook (``webhook=False``: it finds out by polling)."""
        assert self.github is not None
        before = git("rev-parse", "main", cwd=self.work).strip()
        number = self._pull_numbers[branch]
        git("merge", "-q", "--no-ff", "-m", f"Merge pull request #{number}", branch, cwd=self.work)
        after = git("rev-parse", "main", cwd=self.work).strip()
        git("push", "-q", self.remote, "main", cwd=self.work)
        pull = self.github.pulls[number]
        pull.merged, pull.state, pull.merge_commit_sha = True, "closed", after
        self.github.commit_pulls[after] = [number]
        if not webhook:
            return after
        push = {"ref": "refs/heads/main", "before": before, "after": after, "forced": False}
        self.webhook("push", push)
        self._pull_event(number, "closed", merged=True)
        return after

    def close_pr(self, branch: str) -> None:
        """Close the PR of ``branch`` without merging it (the webhook included)."""
        assert self.github is not None
        number = self._pull_numbers[branch]
        self.github.pulls[number].state = "closed"
        self._pull_event(number, "closed", merged=False)

    def _pull_event(self, number: int, action: str, merged: bool = False) -> None:
        assert self.github is not None
        pull = self.github.pulls[number]
        self.webhook(
            "pull_request",
            {
                "action": action,
                "number": number,
                "pull_request": {
                    "number": number,
                    "head": {"sha": pull.head_sha, "ref": pull.head},
                    "base": {"ref": "main"},
                    "merged": merged,
                },
                "sender": {"login": TEAM[0]},
            },
        )

    def adopt_pull(self, number: int) -> None:
        """A pull request someone else opened on the fake GitHub (its head branch's
        files there), made a branch of the served repository, so :meth:`merge`
        merges it as GitHub's button would."""
        assert self.github is not None
        pull = self.github.pulls[number]
        base, head = self.github.repo.files(pull.base), self.github.repo.files(pull.head)
        git("checkout", "-q", "-b", pull.head, "main", cwd=self.work)
        for path, data in head.items():
            if base.get(path) != data and not path.startswith(".pulls/"):
                (self.work / path).parent.mkdir(parents=True, exist_ok=True)
                (self.work / path).write_bytes(data)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", pull.title, cwd=self.work)
        git("push", "-q", self.remote, pull.head, cwd=self.work)
        git("checkout", "-q", "main", cwd=self.work)
        self._pull_numbers[pull.head] = number

    def comment(self, number: int, body: str, user: str) -> None:
        """``user`` comments ``body`` on PR ``number`` (the webhook included)."""
        assert self.github is not None
        self.github.repo.add_comment(number, body, user=user)
        self.webhook(
            "issue_comment",
            {
                "action": "created",
                "issue": {"number": number, "pull_request": {"url": f"pulls/{number}"}},
                "comment": {"body": body},
                "sender": {"login": user},
            },
        )

    def plan_comment(self, number: int) -> str:
        assert self.github is not None
        for comment in self.github.comments.get(number, []):
            if "<!-- mdc:plan -->" in comment.body:
                return comment.body
        return ""

    def mdc(self, *args: str) -> int:
        """Run the ``mdc`` command as a user would; its output goes to :attr:`out`."""
        done = subprocess.run(
            [sys.executable, "-m", "controller", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            check=False,
            timeout=120,
        )
        print(done.stdout, file=self.out, end="", flush=True)
        return done.returncode

    def start_traffic(self) -> Traffic:
        assert self.reconciler is not None
        url = self.reconciler.routes[RANKER] + "/rank"
        self.traffic = Traffic(url, ranker_request, version_classifier(self.work)).start()
        return self.traffic

    # -- the end ----------------------------------------------------------------------

    def close(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        if self.daemon is not None:
            self.daemon.stop()
            if self._thread is not None:
                self._thread.join(timeout=30)
        if self.reconciler is not None:
            self.reconciler.close(stop_releases=True)
        close = getattr(self.reporter, "close", None)
        if callable(close):
            close()
        if self.github is not None:
            self.github.stop()
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.processes.clear()


def _bump(version: str, artifact: str, probe: bool = False) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        spec = repo / "models" / f"{RANKER}.yaml"
        text = spec.read_text()
        old_version = text.split('version: "', 1)[1].split('"', 1)[0]
        old_artifact = text.split("path: artifacts/search-ranker/", 1)[1].split("\n", 1)[0]
        text = text.replace(f'version: "{old_version}"', f'version: "{version}"')
        text = text.replace(f"search-ranker/{old_artifact}", f"search-ranker/{artifact}")
        if probe:
            text = text.replace("freshness: 0.5}", "freshness: 0.5, dwell_time: 0.5}")
        spec.write_text(text)

    return edit


def _start_registry(
    demo: Demo,
) -> tuple[MlflowServer, threading.Thread, list[dict[str, str]]] | None:
    """An MLflow server for the chapter on the registry, started now (it takes a
    few seconds), and, in the background, what the data scientist registers:
    versions 1 and 2 of the iris-classifier, 2 with the alias ``candidate`` (the
    list fills when the thread ends); None when mlflow or scikit-learn is not
    installed."""
    if not available():
        return None
    server = MlflowServer(demo.base / "mlflow", train=train_script(demo.work))
    demo.processes.append(server.launch())
    demo.mlflow_tracking_uri = server.url
    versions: list[dict[str, str]] = []

    def register() -> None:
        try:
            server.wait()
            versions.extend(server.register(1, 2, alias="candidate", started=demo.processes.append))
        except Exception as exc:  # the chapter is skipped, saying why
            demo.say(f"MLflow could not be set up ({exc}); the chapter on it is skipped")

    thread = threading.Thread(target=register, name="mdc-demo-mlflow", daemon=True)
    thread.start()
    return server, thread, versions


def split_line(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(counts.items()))


def run_demo(base: Path | None = None, out: TextIO = sys.stdout, keep: bool = False) -> int:
    """The whole story; 0 when every step happened as told. A workspace it made
    itself is removed at the end (also on an error or Ctrl-C); ``base`` is kept.
    With ``keep`` it runs until interrupted (KeyboardInterrupt, raised again after
    everything is stopped)."""
    started = time.monotonic()
    temporary = base is None
    base = base or Path(tempfile.mkdtemp(prefix="mdc-demo-"))
    try:
        with Demo(base, out) as demo:
            demo.setup()
            registry = _start_registry(demo)
            demo.start_controller()
            demo.say("1. deploying the models from git (bentos are built on first use)")
            for model in ("fraud-scorer", RANKER):
                demo.wait_for(model, lambda s: s.phase is Phase.HEALTHY, 240)
            traffic = demo.start_traffic()
            demo.say(f"traffic: {traffic.rate:.0f} searches/s through the router at {traffic.url}")
            if registry is not None:
                registry[1].join(timeout=240)
                if registry[2]:
                    onboard(demo)
                else:
                    registry = None

            demo.say(
                "2. the search team turns on previews: from now on a PR's search-ranker "
                "answers half of the live searches too, beside the stable one"
            )
            demo.open_pr("previews", "search: preview PRs on mirrored traffic", previews_on)
            demo.merge("previews")
            demo.say("a PR bumps search-ranker to 2026.11.2 (retrained on more data)")
            number = demo.open_pr(
                "ranker-v2", "search-ranker 2026.11.2", _bump("2026.11.2", "v2.json")
            )
            deadline = time.monotonic() + 30
            while not demo.plan_comment(number) and time.monotonic() < deadline:
                time.sleep(0.1)
            demo.say(f"the plan mdc posted on PR #{number}:")
            for line in demo.plan_comment(number).splitlines()[:24]:
                print(f"    {line}", file=out)
            release = show_preview(demo, number, out)
            demo.say(f"a reviewer merges PR #{number}")
            merged_at = time.time()
            demo.merge("ranker-v2")
            seen_weights: dict[int, float] = {}

            def note(status: ModelStatus) -> bool:
                if status.weight and status.weight not in seen_weights:
                    seen_weights[status.weight] = time.time()
                stable = status.stable.version if status.stable is not None else None
                return status.phase is Phase.HEALTHY and stable == "2026.11.2"

            demo.wait_for(RANKER, note, 180)
            weights = sorted(seen_weights.items(), key=lambda kv: kv[1])
            for i, (weight, since) in enumerate(weights):
                until = weights[i + 1][1] if i + 1 < len(weights) else time.time()
                demo.say(
                    f"measured at weight {weight}%: {split_line(traffic.window(since + 1, until))}"
                )
            demo.say(f"promoted {time.time() - merged_at:.0f}s after the merge")
            if release is not None:
                tell_handover(demo, release)

            demo.say("3. a PR brings 2026.11.3, which needs a feature old documents lack")
            bad = demo.open_pr(
                "ranker-v3", "search-ranker 2026.11.3", _bump("2026.11.3", "v3.json", probe=True)
            )
            show_preview(demo, bad, out)
            demo.say(f"the author merges PR #{bad} anyway (branch protection would refuse it)")
            demo.merge("ranker-v3")
            status = demo.wait_for(RANKER, lambda s: s.phase is Phase.ROLLED_BACK, 180)
            demo.say(f"rolled back: {status.history[0].message if status.history else ''}")
            rolled_back = time.time()
            time.sleep(3)
            demo.say(
                "since the rollback, the answers came from: "
                f"{split_line(traffic.window(rolled_back + 0.5))}"
            )
            assert demo.github is not None
            reverts = [p for p in demo.github.pulls.values() if p.head.startswith("mdc/revert-")]
            for pull in reverts:
                demo.say(f"mdc opened revert PR #{pull.number}: {pull.title}")
            demo.say(f"PR #{bad} carries the failed analysis in mdc's comment")

            where = "4"
            if registry is not None:
                server, _, versions = registry
                registry_chapter(demo, server, "4", Traffic, versions[-1])
                where = "5"
            else:
                demo.say(
                    "(mlflow and scikit-learn are not installed: `make demo` installs them "
                    "for the chapter on MLflow)"
                )
            demo.say(f"{where}. where it all is")
            print("$ mdc status", file=out, flush=True)
            demo.mdc("status", "--controller", demo.daemon.url if demo.daemon else "")
            print("$ git log --oneline mdc/status | head", file=out)
            log = git("log", "--oneline", "-12", "mdc/status", cwd=demo.served / "models.git")
            print(log, file=out, end="")
            print(f"$ mdc history {RANKER}", file=out, flush=True)
            demo.mdc("history", RANKER, "--repo", demo.remote, "--limit", "12")
            if demo.daemon is not None and demo.reconciler is not None:
                demo.say(f"dashboard:   {demo.daemon.url}/")
                demo.say(f"metrics:     {demo.daemon.url}/metrics")
                for model, url in sorted(demo.reconciler.routes.items()):
                    demo.say(f"{model}: {url}")
            demo.say(f"the demo took {time.monotonic() - started:.0f}s")
            if keep:  # until Ctrl-C or SIGTERM (KeyboardInterrupt): everything stops
                demo.say("running until Ctrl-C")
                while True:
                    time.sleep(1)
            demo.say("stopping everything the demo started")
    finally:
        if temporary:
            shutil.rmtree(base, ignore_errors=True)
    return 0
