"""``mdc run`` as an operator runs it, against a spec repository served by ``git
daemon``, from a fresh directory with the default state directory; one controller
for the module (deploying the models is the expensive part), the journeys in order:

* both models deployed: URLs in the log that answer, ``mdc status`` from the
  status branch and from the controller, ``mdc logs``;
* a canary paused and resumed by a person, and manual verbs for an unknown model;
* a canary of search-ranker that leaves fraud-scorer's release alone;
* the controller killed with SIGKILL mid-canary under steady traffic, started
  again: the canary finishes, and not one request fails;
* SIGTERM: exit 0, the last line names what keeps serving, the endpoints answer
  with no controller, and the next ``mdc run`` adopts it all.

Each journey pushes its own commit and waits for its own outcome; a journey
starts only when both models are Healthy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.acceptance.conftest import (
    MDC,
    MODELS,
    RANKER,
    SCORER,
    Controller,
    Traffic,
    Workspace,
    ask,
    bump_ranker,
    mdc_env,
    wait_for,
)
from tests.gitservers import GitDaemon

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@dataclass
class Deployed:
    ws: Workspace
    repo: str  # the git:// URL
    ctl: Controller  # the controller running now

    def args(self) -> tuple[str, ...]:
        return ("--repo", self.repo, "--listen", "127.0.0.1:0", "--poll-interval", "1")

    def start(self) -> Controller:
        self.ctl = self.ws.controller(*self.args())
        return self.ctl

    def rows(self) -> dict[str, dict[str, Any]]:
        return self.ctl.api_status()

    def settled(self, timeout: float = 120) -> dict[str, dict[str, Any]]:
        """Both models Healthy with no canary (what every journey starts from)."""
        return wait_for(
            lambda: (
                (rows := self.rows())
                and all(rows[m]["phase"] == "Healthy" and rows[m]["canary"] is None for m in MODELS)
                and rows
            ),
            timeout,
            "both models Healthy",
            detail=self.ctl.excerpt,
        )

    def status_json(self, *where: str) -> dict[str, dict[str, Any]]:
        shown = self.ws.mdc("status", *where, "--format", "json")
        assert shown.returncode == 0, shown.stderr
        return {row["model"]: row for row in json.loads(shown.stdout)["models"]}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The example repository served by ``git daemon``, ``mdc run`` on its git://
    URL from a fresh directory (default state directory), both models Healthy."""
    root = tmp_path_factory.mktemp("acceptance-controller")
    served = root / "served"
    served.mkdir()
    with GitDaemon(served) as daemon, Workspace(root) as ws:
        ws.bare_clone(served / "specs.git")
        url = daemon.url("specs")
        ctl = ws.controller("--repo", url, "--listen", "127.0.0.1:0", "--poll-interval", "1")
        d = Deployed(ws, url, ctl)
        d.settled(120)
        yield d


def _row_line(text: str, model: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.startswith(model + " "))


def test_both_models_deployed_from_a_served_repository(deployed: Deployed) -> None:
    d = deployed
    rows = d.settled()
    assert d.ctl.url.startswith("http://127.0.0.1:")
    routed = d.ctl.routed()  # `mdc run: NAME: routed at URL`
    assert sorted(routed) == sorted(MODELS), d.ctl.log()[-3000:]
    for model in MODELS:
        assert rows[model]["endpoint"] == routed[model]
        ask(model, routed[model])

    # the status branch on the served repository, and the running controller
    for where in (("--repo", d.repo), ("--controller", d.ctl.url)):
        shown = wait_for(
            lambda where=where: (
                (s := d.ws.mdc("status", *where)).returncode == 0
                and all("Healthy" in _row_line(s.stdout, m) for m in MODELS)
                and s
            ),
            30,
            f"mdc status {' '.join(where)} showing both models Healthy",
        )
        for model in MODELS:
            assert _row_line(shown.stdout, model)[-1] == routed[model], shown.stdout
        as_json = d.status_json(*where)
        assert {m: r["endpoint"] for m, r in as_json.items()} == routed
        assert {m: r["phase"] for m, r in as_json.items()} == dict.fromkeys(MODELS, "Healthy")

    # mdc logs MODEL (default state directory, same cwd): the release's own output
    for model, path in ((SCORER, "/score"), (RANKER, "/rank")):
        logs = d.ws.mdc("logs", model)
        assert logs.returncode == 0, logs.stderr
        assert f"path={path}" in logs.stdout, logs.stdout[-2000:]  # BentoML's access log
        assert "status=200" in logs.stdout


def test_mdc_status_to_a_reader_that_closes_early(deployed: Deployed) -> None:
    d = deployed
    d.settled()
    argv = [str(MDC), "status", "--controller", d.ctl.url, "--format", "json"]
    # `mdc status --controller URL --format json | head -c 10`
    with (
        subprocess.Popen(
            argv,
            cwd=d.ws.cwd,
            env=mdc_env(d.ws.cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as mdc,
        subprocess.Popen(["head", "-c", "10"], stdin=mdc.stdout, stdout=subprocess.PIPE) as head,
    ):
        assert mdc.stdout is not None
        assert mdc.stderr is not None
        mdc.stdout.close()
        shown, _ = head.communicate(timeout=60)
        errors = mdc.stderr.read().decode()
        code = mdc.wait(timeout=60)
    assert shown == b'{\n  "model', shown
    assert code in (0, 141), (code, errors)
    assert errors == ""

    # the reader gone before a byte is written: 141 and nothing on stderr
    closed = d.ws.mdc_closed_stdout(*argv[1:])
    assert closed.returncode == 141, closed.stderr
    assert closed.stderr == ""


def test_a_person_pauses_and_resumes_a_canary(deployed: Deployed) -> None:
    d = deployed
    rows = d.settled()
    endpoint = rows[RANKER]["endpoint"]

    # a model the controller does not know: refused, naming those it knows; nothing written
    nosuch = d.ws.mdc("promote", "nosuch")
    assert nosuch.returncode == 1, (nosuch.stdout, nosuch.stderr)
    for model in ("nosuch", *MODELS):
        assert model in nosuch.stderr, nosuch.stderr
    assert list(d.ws.cwd.rglob("*nosuch*")) == []

    d.ws.push("search-ranker 2026.11.2", bump_ranker("2026.11.2", "v2.json"))
    wait_for(
        lambda: (r := d.rows()[RANKER])["phase"] == "Progressing" and r["canary"] == "2026.11.2",
        60,
        "the canary of 2026.11.2 Progressing",
        detail=d.ctl.excerpt,
    )
    paused = d.ws.mdc("pause", RANKER)
    assert paused.returncode == 0, paused.stderr
    assert f"pause {RANKER}" in paused.stdout
    row = wait_for(
        lambda: (r := d.rows()[RANKER])["phase"] == "Paused" and r,
        30,
        "search-ranker Paused after mdc pause",
        detail=d.ctl.excerpt,
    )
    shown = d.ws.mdc("status", "--controller", d.ctl.url)
    assert shown.returncode == 0, shown.stderr
    assert "Paused" in _row_line(shown.stdout, RANKER), shown.stdout
    as_json = d.status_json("--controller", d.ctl.url)[RANKER]
    assert (as_json["phase"], as_json["stable"], as_json["canary"]) == (
        "Paused",
        "2026.11.1",
        "2026.11.2",
    )

    with Traffic(RANKER, endpoint) as traffic:
        time.sleep(7)  # more than an analysis interval (5 s) under enough traffic
        held = d.rows()[RANKER]
        assert (held["phase"], held["step"], held["weight"]) == (
            "Paused",
            row["step"],
            row["weight"],
        ), held
        resumed = d.ws.mdc("resume", RANKER)
        assert resumed.returncode == 0, resumed.stderr
        wait_for(
            lambda: d.rows()[RANKER]["phase"] != "Paused",
            30,
            "not Paused after resume",
            detail=d.ctl.excerpt,
        )
        wait_for(
            lambda: (
                (r := d.rows()[RANKER])["phase"] == "Healthy"
                and r["stable"] == "2026.11.2"
                and r["canary"] is None
            ),
            150,
            "search-ranker promoted to 2026.11.2 after resume",
            detail=d.ctl.excerpt,
        )
    print(f"pause/resume: {len(traffic.ok)} requests answered, {len(traffic.failures)} failed")
    assert traffic.failures == []
    ask(RANKER, endpoint)


def test_a_canary_of_one_model_leaves_the_other_running(deployed: Deployed) -> None:
    d = deployed
    rows = d.settled()
    endpoint = rows[RANKER]["endpoint"]
    scorer = d.ws.releases(SCORER)
    assert len(scorer) == 2, scorer  # replicas: 2
    seen: list[tuple[str, str | None, int]] = []

    def promoted() -> bool:
        r = d.rows()[RANKER]
        if not seen or seen[-1] != (r["phase"], r["canary"], r["weight"]):
            seen.append((r["phase"], r["canary"], r["weight"]))
        return r["phase"] == "Healthy" and r["stable"] == "2026.11.3" and r["canary"] is None

    with Traffic(RANKER, endpoint) as traffic:
        d.ws.push("search-ranker 2026.11.3", bump_ranker("2026.11.3", "v1.json"))
        wait_for(promoted, 150, "search-ranker promoted to 2026.11.3", detail=d.ctl.excerpt)
    print(f"canary phases seen: {seen}")
    assert ("Progressing", "2026.11.3") in [(p, c) for p, c, _ in seen], seen
    assert any(p == "Progressing" and w > 0 for p, _, w in seen), seen  # it took traffic
    assert traffic.failures == []

    # fraud-scorer: the same release, the same process, the same endpoint, untouched
    assert d.ws.releases(SCORER) == scorer
    after = d.rows()[SCORER]
    assert (after["phase"], after["stable"], after["endpoint"]) == (
        "Healthy",
        "1.0.0",
        rows[SCORER]["endpoint"],
    )
    ask(SCORER, after["endpoint"])


@pytest.mark.timeout(420)
def test_sigkill_mid_canary_under_traffic_fails_no_request(deployed: Deployed) -> None:
    d = deployed
    rows = d.settled()
    endpoint = rows[RANKER]["endpoint"]
    stable = d.ws.releases(RANKER)
    seen: list[tuple[str, int | None, int]] = []

    def promoted() -> bool:
        r = d.rows()[RANKER]
        seen.append((r["phase"], r["step"], r["weight"]))
        return r["phase"] == "Healthy" and r["stable"] == "2026.11.4" and r["canary"] is None

    with Traffic(RANKER, endpoint, rate=50) as traffic:
        time.sleep(1)
        d.ws.push("search-ranker 2026.11.4", bump_ranker("2026.11.4", "v2.json"))
        at_kill = wait_for(
            lambda: (
                (r := d.rows()[RANKER])["phase"] == "Progressing"
                and r["canary"] == "2026.11.4"
                and r["weight"] > 0
                and r
            ),
            90,
            "the canary of 2026.11.4 taking traffic",
            detail=d.ctl.excerpt,
        )
        canary = {n: p for n, p in d.ws.releases(RANKER).items() if n not in stable}
        assert len(canary) == 1, (canary, stable)
        d.ctl.kill()
        killed = time.monotonic()
        time.sleep(2)
        d.start()
        restarted = time.monotonic()
        wait_for(
            promoted,
            150,
            "the canary of 2026.11.4 promoted after the restart",
            detail=d.ctl.excerpt,
        )
        promoted_at = time.monotonic()
        time.sleep(3)  # the old stable drains and stops while requests keep coming
    ok, failed = len(traffic.ok), len(traffic.failures)
    print(
        f"SIGKILL mid-canary: {ok + failed} requests, {failed} failed; "
        f"{traffic.ok_between(killed, restarted)} answered while no controller ran; "
        f"killed at step {at_kill['step']} weight {at_kill['weight']}%"
    )
    assert traffic.failures == [], traffic.failures[:10]
    assert ok > 100
    assert traffic.ok_between(killed, restarted) > 0
    assert traffic.failed_between(promoted_at - 5, promoted_at + 3) == []
    assert traffic.ok_between(promoted_at, promoted_at + 3) > 0
    # resumed where it was (never back to weight 0), by the same canary process
    resumed = [w for phase, _, w in seen if phase == "Progressing"]
    assert all(w >= at_kill["weight"] for w in resumed), (at_kill, seen)
    assert d.ws.releases(RANKER) == canary
    assert d.ctl.routed()[RANKER] == endpoint


def test_a_replica_killed_under_traffic_fails_no_request(deployed: Deployed) -> None:
    """fraud-scorer runs ``replicas: 2``: two ``bentoml serve`` processes behind its
    endpoint. One is killed -9 under 50 requests/s: the other answers every
    request, and the killed one is running again soon after."""
    d = deployed
    rows = d.settled()
    endpoint = rows[SCORER]["endpoint"]
    replicas = d.ws.releases(SCORER)
    assert len(replicas) == 2, replicas
    name, pid = sorted(replicas.items())[-1]
    with Traffic(SCORER, endpoint, rate=50) as traffic:
        time.sleep(2)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        back = wait_for(
            lambda: (r := d.ws.releases(SCORER)).get(name, pid) != pid and len(r) == 2 and r,
            90,
            f"{name} running again",
            detail=d.ctl.excerpt,
        )
        wait_for(lambda: d.rows()[SCORER]["phase"] == "Healthy", 90, "fraud-scorer Healthy again")
        time.sleep(2)
    ok, failed = len(traffic.ok), len(traffic.failures)
    print(
        f"replica killed -9: {ok + failed} requests, {failed} failed; "
        f"{traffic.ok_between(killed, killed + 5)} answered in the 5 s after the kill"
    )
    assert traffic.failures == [], traffic.failures[:10]
    assert traffic.ok_between(killed, killed + 5) > 0
    assert back[name] != pid


def test_sigterm_leaves_serving_and_the_next_run_adopts(deployed: Deployed) -> None:
    d = deployed
    rows = d.settled()
    endpoints = {m: rows[m]["endpoint"] for m in MODELS}
    releases = d.ws.releases()
    assert sorted(name.split("/")[0] for name in releases) == sorted([*MODELS, SCORER]), releases
    builds = {p: p.stat().st_mtime_ns for p in d.ws.state.rglob("build-*.log")}
    assert builds, "no build log in the state directory"
    bentos = sorted(p.relative_to(d.ws.state) for p in d.ws.state.glob("bentoml/bentos/*/*"))

    began = time.monotonic()
    code = d.ctl.stop(timeout=30)
    took = time.monotonic() - began
    print(f"SIGTERM: exit {code} after {took:.1f}s")
    assert code == 0, d.ctl.log()[-3000:]
    assert took < 10
    last = d.ctl.lines()[-1]
    assert last.startswith("mdc run: stopped; left serving for the next controller on "), last
    assert ".mdc-state" in last
    assert "the router (pid " in last
    assert "2 routes" in last
    for name, pid in releases.items():
        assert f"{name} (pid {pid})" in last, last
    assert "mdc down" in last

    # no controller: manual verbs are refused, the endpoints keep answering
    refused = d.ws.mdc("pause", RANKER)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "no controller runs" in refused.stderr
    with Traffic(SCORER, endpoints[SCORER]) as scorer, Traffic(RANKER, endpoints[RANKER]) as ranker:
        time.sleep(3)
    for traffic in (scorer, ranker):
        assert len(traffic.ok) > 50, traffic.model
        assert traffic.failures == [], traffic.failures[:10]

    # the next controller on the same state directory adopts it all: same URLs, same
    # processes, nothing built again
    ctl = d.start()
    wait_for(
        lambda: sorted(ctl.routed()) == sorted(MODELS),
        60,
        "routes printed again",
        detail=ctl.excerpt,
    )
    assert ctl.routed() == endpoints
    d.settled(60)
    assert d.ws.releases() == releases
    assert {p: p.stat().st_mtime_ns for p in d.ws.state.rglob("build-*.log")} == builds
    assert sorted(p.relative_to(d.ws.state) for p in d.ws.state.glob("bentoml/bentos/*/*")) == (
        bentos
    )
    for model in MODELS:
        ask(model, endpoints[model])
