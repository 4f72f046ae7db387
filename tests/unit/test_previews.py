"""Pull-request previews in the reconciler, pass by pass, over the fakes of
:mod:`controller.testing.fakes` and a real spec repository (see
``test_reconciler.py``): a PR's head previewed beside the stable and reported;
closed, stopped by a person, restarted, replaced by a new head; a second PR on
the same model waits; a preview waits for free GPUs and never takes the
stable's; a release that needs room takes the preview's GPUs first; a merge
turns the preview into the canary, warm or still starting, and one merged
before it started gives way to the canary without stopping anything."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest
import yaml

from controller.core.allocation import ReleaseKind
from controller.core.preview import PreviewWish
from controller.core.status import Phase
from controller.core.traffic import Pair, RouteConfig
from controller.errors import PermanentError
from controller.testing.fakes import FakeBuilder
from tests.unit.test_reconciler import POLICY, SpecRepo, World, build, initial_files
from tests.unit.test_reconciler import model_yaml as reconciler_model

PREVIEWING = POLICY + "  preview: {share: 40, minPairs: 10, minAgreement: 0.9}\n"


def model_yaml(version: str, gpu: int = 1) -> str:
    """The reconciler tests' model, on ``gpu`` GPUs, comparing its ``label`` in previews."""
    spec = reconciler_model(version).replace("resources: {gpu: 1}", f"resources: {{gpu: {gpu}}}")
    return spec + "  preview: {field: label, sensitive: [user]}\n"


def files(version: str, gpu: int = 1) -> dict[str, str]:
    return {
        "models/m.yaml": model_yaml(version, gpu),
        f"artifacts/m-{version}.json": f'{{"w": "{version}"}}',
    }


def branch(repo: SpecRepo, name: str, changes: dict[str, str]) -> tuple[str, str]:
    """A commit on ``name`` over main's tip: (head, base)."""
    raw = repo.repo
    base = raw.references["refs/heads/main"].target
    index = pygit2.Index()
    index.read_tree(raw[base].tree)
    for path, text in changes.items():
        index.add(
            pygit2.IndexEntry(path, raw.create_blob(text.encode()), pygit2.enums.FileMode.BLOB)
        )
    who = pygit2.Signature("dev", "dev@example.com")
    tree = index.write_tree(raw)
    head = raw.create_commit(None, who, who, name, tree, [base])
    raw.references.create(f"refs/heads/{name}", head, force=True)
    return str(head), str(base)


def open_pr(world: World, number: int, version: str, gpu: int = 1) -> str:
    head, base = branch(world.repo, f"pr-{number}", files(version, gpu))
    world.reconciler.source.fetch_refs([f"pr-{number}"])
    world.reconciler.wish_preview(PreviewWish(number, head, base))
    return head


def answers(count: int, flipped: int = 0) -> list[Pair]:
    out = []
    for i in range(count):
        label = "a" if i % 2 else "b"
        other = ("b" if label == "a" else "a") if i < flipped else label
        out.append(
            Pair(float(i), {"x": i}, 200, 0.01, {"label": label}, 200, 0.01, {"label": other}, 10)
        )
    return out


def preview_gpus(world: World) -> float:
    return sum(ledger.team_preview_gpus("t") for _, ledger in world.reconciler.ledgers.values())


def make(tmp_path: Path, gpu: int = 1) -> World:
    repo = SpecRepo(tmp_path / "models.git")
    start = initial_files(policy=PREVIEWING) | files("1", gpu)
    repo.commit(start, "the first version")
    world = build(tmp_path, repo)
    world.passes(2)
    assert world.model.phase is Phase.HEALTHY
    return world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make(tmp_path)


def test_a_pr_is_previewed_judged_reported_and_closed(world: World) -> None:
    head = open_pr(world, 7, "2")
    world.passes(2)  # built and booked, started; then ready: the router mirrors to it
    preview = world.reconciler.previews.running["m"]
    assert preview.phase == "comparing"
    assert preview.release is not None
    route = world.router.routes["m"]
    address = world.runtime.releases[preview.release.name].address
    assert (route.preview, route.preview_share) == (address, 40)
    assert route.stable is not None  # the clients' split is untouched
    pairing = world.router.pairing["m"]
    assert pairing is not None
    assert pairing.sensitive == frozenset({"user"})
    assert preview_gpus(world) == 1.0
    world.router.paired["m"] = answers(20)
    world.passes(1, step=2)
    report = world.reporter.previews[-1]
    assert (report.number, report.head, report.state) == (7, head, "success")
    assert "agreement 1.000" in report.description

    world.reconciler.wish_preview(PreviewWish(7, head, closed=True))
    world.passes(1)
    assert "m" not in world.reconciler.previews.running
    assert world.runtime.stopped[-1] == preview.release.name
    assert world.router.routes["m"].preview is None
    assert world.router.pairing["m"] is None
    assert preview_gpus(world) == 0.0
    assert "The preview ended: the pull request was closed." in world.reporter.previews[-1].section
    ref = world.repo.repo.references["refs/heads/mdc/status"]
    blob = world.repo.repo[ref.target].tree["previews/m.yaml"]
    record = yaml.safe_load(world.repo.repo[blob.id].data)
    assert (record["pullRequest"], record["head"], record["state"]) == (7, head, "success")
    assert record["comparison"]["agreement"] == 1.0
    assert world.model.stable is not None
    assert world.model.stable.version == "1"  # nothing of the preview reached the model


def test_a_flipping_preview_fails_and_reports_once_a_minute_between_changes(world: World) -> None:
    open_pr(world, 7, "2")
    world.passes(2)
    world.router.paired["m"] = answers(20, flipped=4)
    world.passes(1, step=2)
    assert world.reporter.previews[-1].state == "failure"
    assert "agreement 0.800" in world.reporter.previews[-1].description
    sent = len(world.reporter.previews)
    world.router.paired["m"] = answers(20, flipped=5)
    world.passes(3, step=2)  # the same state: not again within the minute
    assert len(world.reporter.previews) == sent
    world.passes(1, step=60)
    assert len(world.reporter.previews) == sent + 1


def test_stop_restart_and_a_new_head(world: World) -> None:
    first = open_pr(world, 7, "2")
    world.passes(2)
    old = world.reconciler.previews.running["m"].release
    assert old is not None
    world.reconciler.wish_preview(PreviewWish(7, command="stop", who="ann"))
    world.passes(3)
    assert "m" not in world.reconciler.previews.running  # stopped, and not started again
    assert "stopped by ann" in world.reporter.previews[-1].section
    world.reconciler.wish_preview(PreviewWish(7, command="restart", who="ann"))
    world.passes(2)
    assert world.reconciler.previews.running["m"].head == first
    second = open_pr(world, 7, "3")  # pushed to: the old head goes, the new one comes
    world.passes(2)
    preview = world.reconciler.previews.running["m"]
    assert (preview.head, preview.model.version) == (second, "3")
    assert preview.release is not None
    assert preview.release.name != old.name
    assert old.name not in world.runtime.running()
    assert preview_gpus(world) == 1.0


def test_a_second_pr_on_the_same_model_waits(world: World) -> None:
    open_pr(world, 7, "2")
    open_pr(world, 8, "3")
    world.passes(2)
    assert world.reconciler.previews.running["m"].number == 7
    assert world.reconciler.previews.wanted[8].models["m"] == "PR #7 is previewing m"
    world.reconciler.wish_preview(PreviewWish(7, closed=True))
    world.passes(2)
    assert world.reconciler.previews.running["m"].number == 8


def test_a_preview_waits_for_free_gpus_and_never_takes_the_stables(tmp_path: Path) -> None:
    world = make(tmp_path, gpu=2)  # the stable holds both GPUs
    open_pr(world, 7, "2", gpu=2)
    world.passes(3)
    preview = world.reconciler.previews.running["m"]
    assert (preview.phase, preview.release) == ("waiting", None)
    report = world.reporter.previews[-1]
    assert report.state == "pending"
    assert "waiting for free GPUs" in report.description
    assert world.model.phase is Phase.HEALTHY
    assert world.reconciler.book.allocation("m", ReleaseKind.STABLE) is not None
    assert len(world.runtime.running()) == 1


def test_a_release_that_needs_room_takes_the_previews_gpus(world: World) -> None:
    open_pr(world, 7, "2")
    world.passes(2)
    preview = world.reconciler.previews.running["m"].release
    assert preview is not None
    world.repo.commit(files("9"), "another version, not the previewed one")
    world.passes(2)  # its canary needs the second GPU: the preview gives it back
    assert preview.name in world.runtime.stopped
    assert any("preempted" in r.section for r in world.reporter.previews)
    again = world.reconciler.previews.running["m"]  # the PR still wants it: it waits
    assert (again.phase, again.release) == ("waiting", None)
    assert "waiting for free GPUs" in world.reporter.previews[-1].description
    assert world.model.canary is not None
    assert world.model.canary.version == "9"
    assert world.model.canary is not None
    assert world.model.canary.version == "9"
    assert preview_gpus(world) == 0.0


@pytest.mark.parametrize("warm", [True, False])
def test_a_merged_preview_is_the_canary(world: World, warm: bool) -> None:
    open_pr(world, 7, "2")
    world.passes(1 + warm)  # started; warm: ready and comparing too
    preview = world.reconciler.previews.running["m"]
    assert preview.phase == ("comparing" if warm else "starting")
    assert preview.release is not None
    name = preview.release.name
    world.repo.commit(files("2"), "merge #7")
    world.passes(1)
    assert world.model.canary is not None
    assert world.model.canary.name == name
    assert world.runtime.started.count(name) == 1  # not started again
    assert name not in world.runtime.stopped
    assert "m" not in world.reconciler.previews.running
    assert preview_gpus(world) == 0.0
    assert world.reconciler.book.allocation("m", ReleaseKind.CANARY) is not None
    world.reconciler.wish_preview(PreviewWish(7, closed=True, merged=True))
    world.passes(2)
    assert name not in world.runtime.stopped


def test_merged_before_its_release_started_the_canary_starts_and_nothing_is_stopped(
    tmp_path: Path,
) -> None:
    world = make(tmp_path, gpu=2)
    open_pr(world, 7, "2", gpu=2)
    world.passes(2)  # waiting: no GPUs free
    world.repo.commit(files("2", gpu=2), "merge #7")
    world.passes(2)
    assert "m" not in world.reconciler.previews.running  # and not wished again
    assert world.reconciler.previews.wanted[7].models["m"] == "the release branch has m 2 already"
    assert "merged before it started" in world.reporter.previews[-1].section
    assert world.runtime.stopped == []
    assert preview_gpus(world) == 0.0


@pytest.mark.parametrize("breaks", ["build", "release"])
def test_a_preview_that_cannot_run_fails_and_is_not_retried_until_asked(
    world: World, breaks: str
) -> None:
    builder = world.reconciler.packager
    assert isinstance(builder, FakeBuilder)
    if breaks == "build":
        builder.failures["m"] = "the service does not import"
    else:
        world.runtime.never_ready["m"] = "it exited with 1"
    open_pr(world, 7, "2")
    world.passes(3)
    report = world.reporter.previews[-1]
    assert report.state == "failure"
    assert "the preview failed" in report.description
    assert "m" not in world.reconciler.previews.running
    assert world.reconciler.previews.wanted[7].models["m"].startswith("its preview failed")
    starts = len(world.runtime.started)
    world.passes(3)
    assert len(world.runtime.started) == starts  # not again on its own
    assert world.model.phase is Phase.HEALTHY  # the stable never noticed
    builder.failures.clear()
    world.runtime.never_ready.clear()
    world.reconciler.wish_preview(PreviewWish(7, command="restart", who="ann"))
    world.passes(2)
    assert world.reconciler.previews.running["m"].phase == "comparing"


def test_a_router_that_cannot_mirror_fails_the_preview_and_keeps_the_models_routes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure = world.router.configure

    def like_haproxy(model: str, config: RouteConfig) -> None:
        if config.preview is not None:
            raise PermanentError("this router does not mirror", reason="RouterFeatureUnsupported")
        configure(model, config)

    monkeypatch.setattr(world.router, "configure", like_haproxy)
    open_pr(world, 7, "2")
    world.passes(2)
    report = world.reporter.previews[-1]
    assert report.state == "failure"
    assert "this router does not mirror" in report.description
    assert "m" not in world.reconciler.previews.running
    assert preview_gpus(world) == 0.0
    world.repo.commit(files("3"), "another version")
    world.passes(2)  # the canary's routes carry no preview: they are set
    assert world.model.canary is not None
    assert world.router.routes["m"].canary is not None
    assert world.router.routes["m"].preview is None


def test_a_preview_gets_the_policys_warm_up_before_traffic_is_mirrored(tmp_path: Path) -> None:
    repo = SpecRepo(tmp_path / "models.git")
    start = initial_files(
        policy=PREVIEWING.replace("warmup: {timeout: 1m}", "warmup: {timeout: 1m, holdFor: 5s}")
    )
    start.update(files("1"))
    repo.commit(start, "the first version")
    world = build(tmp_path, repo)
    world.passes(2)
    open_pr(world, 7, "2")
    world.passes(2, step=1)  # started, then ready: held
    preview = world.reconciler.previews.running["m"]
    assert preview.phase == "starting"
    assert world.router.routes["m"].preview is None
    assert "warming up" in world.reconciler.previews.view(preview)[1]
    world.passes(1, step=5)
    assert preview.phase == "comparing"
    assert world.router.routes["m"].preview is not None
