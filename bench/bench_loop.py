"""From ``git push`` to the first request the canary serves: webhook mode and poll
mode, with a warm bento cache.

One :class:`~controller.demo.Demo` (the example spec repo behind a real ``git
daemon``, the fake GitHub, the real controller in a thread, ``tick`` 0.25 s)
deploys both example models; then traffic runs through the router to
``search-ranker`` at :data:`RATE` requests/s and every answer is classified by
the version that gave it. Each round opens a PR that bumps ``search-ranker`` to
a new version string, merges it (a merge commit pushed to ``main``) and waits
until the canary is promoted before the next round. The rounds alternate the
artifacts ``v1.json`` / ``v2.json``: a bento's tag hashes the artifact and the
service code, not the version string, so after one warm-up round (which
builds the ``v2`` bento: the *cold* row, left out of the summary) every
round's bento is already in the store -- checked against the store's listing
before the push.

Modes:

* ``webhook``: the merge sends the push webhook; the loop fetches at once;
* ``poll``: no webhook; the poll interval is set to :data:`POLL_INTERVAL` and
  the push lands at a random phase of it (so about half an interval is added on
  average);
* ``preview``: previews turned on (run last: the ``fast`` policy gets a
  ``preview``); each PR's head runs as a preview on mirrored traffic until it
  compares, then the merge is pushed with the webhook: the canary is the
  preview's release, already warm (its ``started`` precedes the push: ``-``).

Per round, on the wall clock (``time.time``), from the moment ``git push`` of
``main`` returned:

* ``seen``: the fetch that brought the merge commit (its snapshot's time);
* ``started``: the canary's ``bentoml serve`` spawned (the runtime's record);
* ``ready``: the router was given the canary at weight 20 (the route the
  controller set, read every 10 ms): the runtime found it ready -- ``/readyz``,
  then a probe request -- and the warm-up ended (the ``fast`` policy has no
  ``holdFor``);
* ``answer``: the first answer to the generated traffic classified as the new
  artifact.

The runtime's own READY record is printed beside: it is stamped with the time
the controller's tick began, before its ``/readyz`` call (which blocks while
``bentoml serve`` starts), so it runs ahead of ``ready``.

Baselines in the same run: the cold round (the bento built during the round),
and a bare ``bentoml serve`` of the same, already-built bento polled with the
probe request until it answers (what ``started -> ready`` stands on).

Run: ``.venv/bin/python -m bench.bench_loop [ROUNDS]`` (default 3 per mode;
about 5 minutes on 2 cores). Prints figures; asserts nothing. Exits 1 with the
rounds done so far when a step does not happen in time.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

import controller.demo as demo_module
from controller.adapters.runtime.base import Release, State
from controller.core.environment import bentoml_env
from controller.core.status import Phase
from controller.demo import RANKER, Demo, Traffic, _bump, ranker_request, version_classifier
from controller.demo_previews import previews_on
from tests.gitservers import free_port

ROUNDS = 3
RATE = 100.0  # requests/s offered to search-ranker (one client, sequential)
TICK = 0.25
POLL_INTERVAL = 5.0  # seconds, in poll mode
DEPLOY_TIMEOUT = 240.0  # first deploy of both models (two cold bento builds)
ROUND_TIMEOUT = 180.0  # push -> promoted (or rolled back)
BARE_TIMEOUT = 60.0
BARE_RUNS = 2
ARTIFACTS = ("v1.json", "v2.json")


class BenchError(Exception):
    """A step did not happen in time; the message says which."""


@dataclass
class Round:
    mode: str
    label: str  # "cold" or the round number
    version: str
    artifact: str
    warm: bool  # the bento was in the store before the push
    push: float
    seen: float | None = None
    started: float | None = None
    ready: float | None = None  # the router got the canary
    marked: float | None = None  # the runtime's READY record (its ``since``)
    answer: float | None = None
    outcome: str = "timed out"

    def span(self, since: float | None, until: float | None) -> float | None:
        return None if since is None or until is None else until - since

    @property
    def total(self) -> float | None:
        return self.span(self.push, self.answer)


class PushClock:
    """Stands in for :func:`controller.demo.git`: notes when ``git push ... main``
    returned, so the rounds start at the push and not after the webhook."""

    def __init__(self, git: Callable[..., str]) -> None:
        self.git = git
        self.pushed: float | None = None

    def __call__(self, *args: str | Path, cwd: Path | None = None, **more: float) -> str:
        out = self.git(*args, cwd=cwd, **more)
        if args and args[0] == "push" and args[-1] == "main":
            self.pushed = time.time()
        return out


def fmt(value: float | None, width: int = 7) -> str:
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def bento_versions(demo: Demo) -> set[str]:
    assert demo.reconciler is not None
    store = demo.reconciler.packager.home / "bentos" / RANKER
    return {p.name for p in store.iterdir()} if store.is_dir() else set()


def release_of(demo: Demo, version: str) -> Release | None:
    assert demo.reconciler is not None
    for release in list(demo.reconciler.runtime.releases.values()):
        if release.spec.model == RANKER and release.spec.version == version:
            return release
    return None


def routed(demo: Demo) -> bool:
    """Whether the router sends search-ranker's traffic to a canary now (the route
    the controller last set: the router runs in a process of its own)."""
    assert demo.reconciler is not None
    config = demo.reconciler.moves.configs.get(RANKER)
    return config is not None and config.canary is not None and 0 < config.weight < 100


def seen_at(demo: Demo, since: int, sha: str) -> float | None:
    """When the first fetch that brought ``sha`` finished (passes from index ``since``)."""
    revision = f"main@sha1:{sha}"
    for result in list(demo.passes[since:]):
        if result.revision == revision and result.poll is not None:
            snapshot = result.poll.snapshot
            return snapshot.fetched_at if snapshot is not None else None
    return None


def wait_fetch(demo: Demo, since: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.poll is not None for r in list(demo.passes[since:])):
            return
        time.sleep(0.05)
    raise BenchError(f"the controller did not fetch within {timeout:.0f}s")


def one_round(
    demo: Demo,
    traffic: Traffic,
    clock: PushClock,
    *,
    mode: str,
    label: str,
    version: str,
    artifact: str,
) -> Round:
    """Open a PR bumping search-ranker to ``version`` / ``artifact``, merge it, and
    follow the canary until it is promoted or rolled back."""
    assert demo.reconciler is not None
    branch = f"bench-{mode}-{label}"
    demo.open_pr(branch, f"{RANKER} {version}", _bump(version, artifact))
    if mode == "preview":  # merged once the preview compares: its bento is built
        wait_preview(demo, version)
    bentos = bento_versions(demo)
    first_pass = len(demo.passes)
    clock.pushed = None
    sha = demo.merge(branch, webhook=mode != "poll")
    push = clock.pushed if clock.pushed is not None else time.time()
    stem = Path(artifact).stem
    result = Round(mode, label, version, artifact, False, push)
    deadline = time.monotonic() + ROUND_TIMEOUT
    while True:
        release = release_of(demo, version)
        if release is not None:
            if result.started is None and release.started_at >= push:  # not a preview's
                result.started = release.started_at
            if result.marked is None and release.state is State.READY:
                result.marked = release.since
        if result.ready is None and routed(demo):
            result.ready = time.time()
        status = demo.status(RANKER)
        if status is not None and status.attempted_revision == f"main@sha1:{sha}":
            if (
                status.phase is Phase.HEALTHY
                and status.stable is not None
                and status.stable.version == version
            ):
                result.outcome = "promoted"
                break
            if status.phase in (Phase.ROLLED_BACK, Phase.STALLED):
                reason = status.history[0].message if status.history else ""
                result.outcome = f"{status.phase}: {reason}"[:60]
                break
        if time.monotonic() > deadline:
            phase = status.phase if status is not None else "no status"
            raise BenchError(
                f"{mode} round {label}: {RANKER} {version} neither promoted nor rolled back "
                f"within {ROUND_TIMEOUT:.0f}s of the push (phase {phase}, "
                f"canary release {release.state if release else 'never started'})"
            )
        time.sleep(0.01)
    result.seen = seen_at(demo, first_pass, sha)
    if release is not None:
        result.warm = release.spec.bento.split(":", 1)[1] in bentos
    with traffic.lock:
        result.answer = next(
            (at for at, code, v in traffic.answers if at >= push and code == 200 and v == stem),
            None,
        )
    return result


def wait_preview(demo: Demo, version: str) -> None:
    """Until the PR's preview of ``version`` compares answers (warm, mirrored to)."""
    assert demo.reconciler is not None
    deadline = time.monotonic() + ROUND_TIMEOUT
    while time.monotonic() < deadline:
        preview = demo.reconciler.previews.running.get(RANKER)
        if preview is not None and (preview.model.version, preview.phase) == (version, "comparing"):
            return
        time.sleep(0.05)
    raise BenchError(f"the preview of {RANKER} {version} did not start within {ROUND_TIMEOUT}s")


def bare_serve(demo: Demo, bento: str) -> float:
    """Seconds from a bare ``bentoml serve`` of ``bento`` to its first probe answer."""
    assert demo.reconciler is not None
    assert demo.reconciler.load is not None
    probe = demo.reconciler.load.desired.models[RANKER].probe
    assert probe is not None
    home = demo.base / "bare-home"
    home.mkdir(exist_ok=True)
    for sub in ("models", "bentos"):
        if not (home / sub).exists():
            (home / sub).symlink_to(demo.reconciler.packager.home / sub)
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            bento,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=bentoml_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.perf_counter() - began < BARE_TIMEOUT:
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.post(
                    f"http://127.0.0.1:{port}{probe.path}", json=dict(probe.body), timeout=2
                )
                if answer.status_code == 200:
                    return time.perf_counter() - began
            if proc.poll() is not None:
                raise BenchError(f"bare bentoml serve {bento} exited with {proc.returncode}")
            time.sleep(0.02)
        raise BenchError(f"bare bentoml serve {bento} did not answer within {BARE_TIMEOUT:.0f}s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def median_of(rounds: list[Round], stage: Callable[[Round], float | None]) -> float | None:
    values = [v for v in map(stage, rounds) if v is not None]
    return statistics.median(values) if values else None


def report(
    rounds: list[Round], traffic: Traffic | None, hold: float | None, bare: list[float]
) -> None:
    print(
        f"push -> first answer from the canary: {RANKER}, policy fast (warm-up hold "
        f"{'none' if not hold else f'{hold:g} s'}, then weight 20%), tick {TICK:g} s"
    )
    if traffic is not None:
        with traffic.lock:
            answers = list(traffic.answers)
        if len(answers) > 1:
            rate = len(answers) / (answers[-1][0] - answers[0][0])
            print(f"traffic: {RATE:.0f} req/s offered, {rate:.0f} req/s answered")
    print("seconds, each stage from the one before: push -> seen (fetched) -> started")
    print("(bentoml serve spawned) -> ready (router got it at 20%) -> answer (first from it);")
    print("rt-ready: the runtime's READY record, from started; preview rounds: the canary is")
    print("the PR's preview, started before the push (started '-': ready is from seen)")
    print(
        f"  {'mode':<8} {'round':>5} {'bento':>6} {'seen':>7} {'started':>7} {'ready':>7} "
        f"{'answer':>7} {'total':>7} {'rt-ready':>8}  outcome"
    )
    for r in rounds:
        print(
            f"  {r.mode:<8} {r.label:>5} {'warm' if r.warm else 'built':>6} "
            f"{fmt(r.span(r.push, r.seen))} {fmt(r.span(r.seen, r.started))} "
            f"{fmt(r.span(r.started or r.seen, r.ready))} {fmt(r.span(r.ready, r.answer))} "
            f"{fmt(r.total)} {fmt(r.span(r.started, r.marked), 8)}  {r.outcome}"
        )
    print("warm cache, push -> first canary answer (median, max; then each stage's median):")
    for mode in ("webhook", "poll", "preview"):
        done = [r for r in rounds if r.mode == mode and r.warm and r.total is not None]
        totals = [r.total for r in done if r.total is not None]
        if not totals:
            print(f"  {mode:<8} no round done")
            continue
        extra = f"  (poll interval {POLL_INTERVAL:g} s)" if mode == "poll" else ""
        print(
            f"  {mode:<8} n={len(totals)}  median {statistics.median(totals):5.2f}  "
            f"max {max(totals):5.2f}  |"
            f" seen {fmt(median_of(done, lambda r: r.span(r.push, r.seen)), 5)}"
            f"  started {fmt(median_of(done, lambda r: r.span(r.seen, r.started)), 5)}"
            f"  ready {fmt(median_of(done, lambda r: r.span(r.started or r.seen, r.ready)), 5)}"
            f"  answer {fmt(median_of(done, lambda r: r.span(r.ready, r.answer)), 5)}{extra}"
        )
    if bare:
        each = ", ".join(f"{b:.2f}" for b in bare)
        print(
            "baseline: bare bentoml serve of the built bento, start -> first probe answer: "
            f"median {statistics.median(bare):.2f} s of {len(bare)} ({each}); "
            "compare with started -> ready"
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    rounds_per_mode = int(args[0]) if args else ROUNDS
    base = Path(tempfile.mkdtemp(prefix="mdc-bench-loop-"))
    clock = PushClock(demo_module.git)
    demo_module.git = clock
    rounds: list[Round] = []
    bare: list[float] = []
    hold: float | None = None
    traffic: Traffic | None = None
    failure: str | None = None
    rng = random.Random(11)
    try:
        with Demo(base / "demo", out=sys.stderr, tick=TICK) as demo:
            demo.setup()
            demo.start_controller()
            assert demo.reconciler is not None
            assert demo.daemon is not None
            try:
                for model in ("fraud-scorer", RANKER):
                    demo.wait_for(model, lambda s: s.phase is Phase.HEALTHY, DEPLOY_TIMEOUT)
            except TimeoutError as exc:
                raise BenchError(f"first deploy: {exc}") from None
            assert demo.reconciler.load is not None
            policy = demo.reconciler.load.desired.models[RANKER].rollout
            hold = demo.reconciler.load.desired.policies[policy].warmup_hold
            url = demo.reconciler.routes[RANKER] + "/rank"
            flow = Traffic(url, ranker_request, version_classifier(demo.work), rate=RATE)
            demo.traffic = traffic = flow.start()
            time.sleep(2)
            say(f"traffic at {RATE:.0f} req/s through {url}")

            count = 0

            def run(mode: str, label: str) -> Round:
                nonlocal count
                count += 1
                version = f"2027.1.{count}"
                artifact = ARTIFACTS[count % 2]  # v2 first: the deploy runs v1
                say(f"{mode} round {label}: {RANKER} {version} ({artifact})")
                done = one_round(
                    demo, flow, clock, mode=mode, label=label, version=version, artifact=artifact
                )
                rounds.append(done)
                say(f"  push -> first canary answer {fmt(done.total).strip()} s, {done.outcome}")
                return done

            cold = run("webhook", "cold")
            if cold.warm:
                say("the v2 bento was already in the store: the cold row is warm")
            for i in range(1, rounds_per_mode + 1):
                run("webhook", str(i))

            demo.reconciler.poller.interval = POLL_INTERVAL
            since = len(demo.passes)
            demo.daemon.trigger.fire()  # the next fetch is scheduled on the new interval
            wait_fetch(demo, since, 30)
            for i in range(1, rounds_per_mode + 1):
                time.sleep(rng.uniform(0, POLL_INTERVAL))  # a random phase of the poll
                run("poll", str(i))

            demo.open_pr("bench-previews", "preview PRs on mirrored traffic", previews_on)
            demo.merge("bench-previews")
            for i in range(1, rounds_per_mode + 1):
                run("preview", str(i))

            flow.stop()
            status = demo.status(RANKER)
            if status is not None and status.stable is not None and status.stable.bento:
                for _ in range(BARE_RUNS):
                    bare.append(bare_serve(demo, status.stable.bento))
            say("stopping everything")
    except BenchError as exc:
        failure = str(exc)
    finally:
        demo_module.git = clock.git
        shutil.rmtree(base, ignore_errors=True)
    report(rounds, traffic, hold, bare)
    if failure is not None:
        print(f"FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
