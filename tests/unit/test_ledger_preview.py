"""Previews in the GPU ledger, table first: a pull request's preview takes only
free GPUs and waits rather than displace anything; a stable or canary release
reclaims previews (newest first, only as many as it needs, whatever its
guarantee) before it preempts borrowed allocations; previews count against the
team's limit on their own quota line -- and a property test that no sequence
over-commits a GPU or costs a serving stable its GPUs because of a preview."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.allocation import (
    Allocation,
    Demand,
    Placed,
    ReleaseKind,
    Request,
    Waiting,
)
from controller.core.inventory import GPU
from controller.core.ledger import Ledger
from controller.spec.kinds import Quota

GiB = 2**30
STABLE, CANARY, PREVIEW = ReleaseKind.STABLE, ReleaseKind.CANARY, ReleaseKind.PREVIEW


def inventory(**nodes: list[int]) -> list[GPU]:
    """inventory(a=[80, 80], b=[40]) -> GPUs with those GiB, uuids a0, a1, b0."""
    return [
        GPU(node, i, f"{node}{i}", f"{size}G", size * GiB, declared=True)
        for node, sizes in nodes.items()
        for i, size in enumerate(sizes)
    ]


def quota(team: str, guaranteed: float = 8, limit: float = 8, priority: int = 100) -> Quota:
    return Quota(team, guaranteed, limit, priority)


def req(
    release: str,
    team: str = "t",
    *,
    gpus: int = 0,
    fraction: float = 0.0,
    memory: int = 0,
    kind: ReleaseKind = STABLE,
    serving: bool = False,
) -> Request:
    demand = Demand(gpus=gpus, fraction=fraction, memory=memory * GiB)
    return Request(release, release, team, demand, 1, kind, serving)


def preview(release: str, team: str = "t", **demand: Any) -> Request:
    return req(release, team, kind=PREVIEW, **demand)


def placed(decision: Any) -> Allocation:
    assert isinstance(decision, Placed), decision
    return decision.allocation


def where(allocation: Allocation) -> list[list[str]]:
    return [[s.gpu for s in replica] for replica in allocation.replicas]


def books(ledger: Ledger) -> tuple[Any, ...]:
    """Everything a decision may change, to compare before and after."""
    return (
        dict(ledger.allocations),
        {u: (s.free, dict(s.holders)) for u, s in ledger.gpus.items()},
        dict(ledger.used),
        dict(ledger.preview_used),
    )


def book(ledger: Ledger, held: list[Request]) -> None:
    for request in held:
        placed(ledger.place(request))


# -- a preview takes free GPUs only --------------------------------------------------


def test_a_preview_takes_free_gpus_on_its_own_quota_line() -> None:
    ledger = Ledger(inventory(a=[80] * 2), [quota("t", guaranteed=0, limit=2)])
    allocation = placed(ledger.place(preview("m/preview", fraction=0.5)))
    assert allocation.kind is PREVIEW
    assert allocation.borrowed is False  # above a guarantee of 0, yet not borrowed
    assert ledger.team_gpus("t") == 0
    assert ledger.used["t"] == 0
    assert ledger.team_preview_gpus("t") == 0.5
    assert ledger.free_gpus() == 1.5  # it really holds its share
    assert ledger.stranded() == (0.5, 1)
    ledger.check()
    assert ledger.release("m/preview") == allocation
    assert ledger.team_preview_gpus("t") == 0
    assert ledger.free_gpus() == 2
    ledger.check()


QUOTAS = [
    quota("fraud", guaranteed=2, limit=4, priority=200),
    quota("search", guaranteed=0, limit=4, priority=100),
]


@pytest.mark.parametrize(
    ("held", "ask"),
    [
        # a borrowed canary of another team, within the asking team's guarantee
        ([req("s/canary", "search", gpus=2, kind=CANARY)], preview("f/preview", "fraud", gpus=1)),
        # another preview, even the asking team's own
        ([preview("s/preview", "search", gpus=2)], preview("f/preview", "fraud", gpus=1)),
        ([preview("f/old", "fraud", gpus=2)], preview("f/preview", "fraud", gpus=1)),
        # a serving stable release
        (
            [req("f/stable", "fraud", gpus=2, serving=True)],
            preview("f/preview", "fraud", fraction=0.5),
        ),
        # a share: the partly used GPU has too little left
        (
            [req("f/stable", "fraud", fraction=0.75), req("s/stable", "search", gpus=1)],
            preview("f/preview", "fraud", memory=40),
        ),
    ],
)
def test_a_preview_waits_rather_than_displace_anything(held: list[Request], ask: Request) -> None:
    ledger = Ledger(inventory(a=[80] * 2), QUOTAS)
    book(ledger, held)
    before = books(ledger)
    decision = ledger.place(ask)
    assert isinstance(decision, Waiting), decision
    assert "a preview waits for free GPUs and never displaces a release" in decision.reason
    assert "free on a" in decision.reason  # the numbers, as for any wait
    assert books(ledger) == before
    ledger.check()


def test_a_cpu_only_preview_books_nothing() -> None:
    ledger = Ledger(inventory(a=[80]), [quota("t", limit=0)])
    allocation = placed(ledger.place(preview("m/preview")))
    assert allocation.replicas == ((),)
    assert ledger.allocations == {}
    assert ledger.team_preview_gpus("t") == 0


# -- releases reclaim previews ---------------------------------------------------------


def previews_in_order(ledger: Ledger) -> None:
    """p1, p2, p3 (oldest to newest) of team u, one GPU each, and a serving stable."""
    book(
        ledger,
        [
            req("s/stable", "t", gpus=1, serving=True),
            preview("p1", "u", gpus=1),
            preview("p2", "u", gpus=1),
            preview("p3", "u", gpus=1),
        ],
    )


@pytest.mark.parametrize(
    ("ask", "reclaimed"),
    [
        # the newest preview first, and only as many as needed
        (req("m/stable", "t", fraction=0.5), ["p3"]),
        (req("m/stable", "t", gpus=1), ["p3"]),
        (req("m/canary", "t", gpus=2, kind=CANARY), ["p3", "p2"]),
        (req("m/canary", "t", gpus=3, kind=CANARY), ["p3", "p2", "p1"]),
        # a canary of a team with no guarantee at all, above it: previews still go
        (req("v/canary", "v", gpus=1, kind=CANARY), ["p3"]),
        # the previews' own team's stable: its previews give way too
        (req("u/stable", "u", gpus=2), ["p3", "p2"]),
    ],
)
def test_a_release_reclaims_the_newest_previews_it_needs(
    ask: Request, reclaimed: list[str]
) -> None:
    ledger = Ledger(
        inventory(a=[80] * 4),
        [
            quota("t", guaranteed=4, limit=4),
            quota("u", guaranteed=0, limit=4),
            quota("v", guaranteed=0, limit=4),
        ],
    )
    previews_in_order(ledger)
    decision = ledger.place(ask)
    assert isinstance(decision, Placed), decision
    assert list(decision.preempted) == reclaimed
    assert len(decision.reasons) == len(reclaimed)
    for name, reason in zip(reclaimed, decision.reasons, strict=True):
        assert reason.startswith(f"PR preview {name} gives back 1 GPU for {ask.release}")
        assert name not in ledger.allocations
    assert decision.allocation.kind is ask.kind
    assert "s/stable" in ledger.allocations
    assert ledger.team_preview_gpus("u") == 3 - len(reclaimed)
    ledger.check()


def test_a_reclaimed_preview_that_was_not_needed_keeps_its_gpu() -> None:
    ledger = Ledger(inventory(a=[80, 80], b=[80]), [quota("t", 4, 4), quota("u", 0, 4)])
    placed(ledger.place(req("hold-b", gpus=1)))  # b0
    old = placed(ledger.place(preview("old", "u", gpus=1)))  # a0
    ledger.release("hold-b")
    placed(ledger.place(req("hold-a", gpus=1)))  # a1
    new = placed(ledger.place(preview("new", "u", gpus=1)))  # b0
    ledger.release("hold-a")
    assert (where(old), where(new)) == ([["a0"]], [["b0"]])
    # two GPUs on one node: the newest preview (b0) is tried first, in vain; the
    # older one (a0) makes room, and the newest is left where it was
    decision = ledger.place(req("m/stable", gpus=2))
    assert isinstance(decision, Placed), decision
    assert decision.preempted == ("old",)
    assert where(decision.allocation) == [["a0", "a1"]]
    assert ledger.allocations["new"] == new
    ledger.check()


def test_previews_go_before_borrowed_allocations() -> None:
    ledger = Ledger(inventory(a=[80] * 4), QUOTAS)
    book(
        ledger,
        [
            req("s1", "search", gpus=1, kind=CANARY),
            req("s2", "search", gpus=1, kind=CANARY),
            req("s3", "search", gpus=1, kind=CANARY),
            preview("p", "search", gpus=1),
        ],
    )
    # fraud asks for 2 within its guarantee: the preview goes, then one borrowed canary
    decision = ledger.place(req("f/stable", "fraud", gpus=2))
    assert isinstance(decision, Placed), decision
    assert decision.preempted == ("p", "s3")
    assert decision.reasons[0].startswith("PR preview p gives back 1 GPU for f/stable")
    assert decision.reasons[1].startswith("s3 gives back 1 GPU borrowed by team search")
    ledger.check()


@pytest.mark.parametrize(
    ("held", "ask", "words"),
    [
        # serving stables are never preempted; the preview is not enough alone
        (
            [req("s/stable", "t", gpus=1, serving=True), preview("p", "u", gpus=1)],
            req("m/canary", "t", gpus=2, kind=CANARY),
            ["reclaiming every preview (1 GPUs) would not make room either"],
        ),
        # above its guarantee, nothing borrowed is preempted for it
        (
            [req("b", "u", gpus=1, kind=CANARY), preview("p", "u", gpus=1)],
            req("m/canary", "v", gpus=2, kind=CANARY),
            ["above its guarantee", "reclaiming every preview"],
        ),
        # within the guarantee, but the borrowed allocation would take its team
        # below its own guarantee
        (
            [req("b", "u", gpus=1, kind=CANARY), preview("p", "v", fraction=0.5)],
            req("m/stable", "t", gpus=2),
            ["reclaiming every preview (0.5 GPUs)"],
        ),
    ],
)
def test_when_reclaiming_every_preview_is_not_enough_nothing_changes(
    held: list[Request], ask: Request, words: list[str]
) -> None:
    ledger = Ledger(
        inventory(a=[80] * 2),
        [quota("t", 4, 4), quota("u", 1, 4), quota("v", 0, 4)],
    )
    book(ledger, held)
    before = books(ledger)
    decision = ledger.place(ask)
    assert isinstance(decision, Waiting), decision
    for word in words:
        assert word in decision.reason
    assert "free on a" in decision.reason
    assert books(ledger) == before
    ledger.check()


# -- quotas ----------------------------------------------------------------------------


def test_previews_count_against_the_limit_on_their_own_line() -> None:
    ledger = Ledger(inventory(a=[80] * 8), [quota("t", guaranteed=1, limit=3)])
    placed(ledger.place(preview("p1", gpus=1)))
    placed(ledger.place(preview("p2", gpus=1)))
    # previews do not make the team borrow
    stable = placed(ledger.place(req("m/stable", gpus=1, serving=True)))
    assert stable.borrowed is False
    assert (ledger.team_gpus("t"), ledger.team_preview_gpus("t")) == (1, 2)
    assert ledger.used == {"t": 1000}
    # a further preview would take the team past its limit
    waiting = ledger.place(preview("p3", fraction=0.5))
    assert isinstance(waiting, Waiting)
    assert "1 of limit 3 GPUs held, and 2 by previews" in waiting.reason
    memory = ledger.place(preview("p4", memory=10))  # known only once placed
    assert isinstance(memory, Waiting)
    assert "by previews" in memory.reason
    ledger.check()
    # a release never waits on the limit because of previews: the team's own
    # newest previews give way so it stays within its limit
    decision = ledger.place(req("m/canary", gpus=1, kind=CANARY))
    assert isinstance(decision, Placed), decision
    assert decision.preempted == ("p2",)
    assert decision.reasons[0].startswith("PR preview p2 gives back 1 GPU for m/canary")
    assert decision.allocation.borrowed is True  # 2 held of a guarantee of 1
    assert (ledger.team_gpus("t"), ledger.team_preview_gpus("t")) == (2, 1)
    ledger.check()


def test_another_teams_limit_line_is_not_touched() -> None:
    ledger = Ledger(inventory(a=[80] * 4), [quota("t", 1, 1), quota("u", 0, 2)])
    placed(ledger.place(preview("u/preview", "u", gpus=2)))
    decision = ledger.place(req("m/stable", gpus=1))
    assert isinstance(decision, Placed)
    assert decision.preempted == ()
    assert ledger.team_preview_gpus("u") == 2
    ledger.check()


# -- what-ifs and restart --------------------------------------------------------------


def test_clone_and_rebuild_keep_previews_apart() -> None:
    gpus = inventory(a=[80] * 2, b=[80] * 2)
    quotas = [quota("t", guaranteed=1, limit=4), quota("u", guaranteed=0, limit=2)]
    ledger = Ledger(gpus, quotas)
    book(
        ledger,
        [
            req("m/stable", gpus=1, serving=True),
            preview("m/preview", fraction=0.5),
            req("m/canary", gpus=1, kind=CANARY),
            preview("n/preview", "u", gpus=1),
        ],
    )
    trial = ledger.clone()
    trial.release("m/preview")
    assert trial.team_preview_gpus("t") == 0
    assert ledger.team_preview_gpus("t") == 0.5  # the original is untouched
    records = list(ledger.allocations.values())
    rebuilt, problems, again = Ledger.rebuild(gpus, quotas, reversed(records))
    assert (problems, again) == ([], [])
    assert rebuilt.allocations == ledger.allocations
    assert rebuilt.used == ledger.used == {"t": 2000, "u": 0}
    assert rebuilt.preview_used == ledger.preview_used == {"t": 500, "u": 1000}
    assert rebuilt.free_gpus() == ledger.free_gpus() == 0.5
    assert not any(a.borrowed for a in rebuilt.allocations.values() if a.kind is PREVIEW)
    rebuilt.check()
    # what a rebuilt ledger decides is what the original decides: the preview goes
    ask = req("x/stable", gpus=1)
    decision = ledger.place(ask)
    assert isinstance(decision, Placed)
    assert decision.preempted == ("n/preview",)
    assert rebuilt.place(ask) == decision
    rebuilt.check()


def test_a_preview_is_never_promoted_in_place() -> None:
    ledger = Ledger(inventory(a=[80]), [quota("t")])
    placed(ledger.place(preview("m/preview", gpus=1)))
    with pytest.raises(ValueError, match="preview"):
        ledger.rename("m/preview", "m/stable")
    assert ledger.team_preview_gpus("t") == 1


# -- the property: previews never over-commit and never cost a serving stable ------

NAMES = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"]

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("place"),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(NAMES),
            st.one_of(
                st.builds(Demand, gpus=st.integers(1, 2)),
                st.builds(Demand, fraction=st.sampled_from([0.25, 0.5, 0.75])),
                st.builds(Demand, memory=st.sampled_from([10 * GiB, 39 * GiB, 70 * GiB])),
            ),
            st.integers(1, 2),
            st.sampled_from(["serving", STABLE, CANARY, PREVIEW, PREVIEW]),
        ),
        st.tuples(st.just("release"), st.sampled_from(NAMES)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=operations,
    sizes=st.lists(
        st.lists(st.sampled_from([40, 80]), min_size=1, max_size=3), min_size=1, max_size=3
    ),
    limits=st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(0, 5)),
)
def test_previews_never_over_commit_or_cost_a_serving_stable(
    ops: list[Any], sizes: list[list[int]], limits: tuple[int, int, int]
) -> None:
    gpus = inventory(**{f"n{i}": s for i, s in enumerate(sizes)})
    quotas = [
        quota("a", guaranteed=limits[0], limit=limits[0] + 2, priority=10),
        quota("b", guaranteed=min(limits[1], 2), limit=limits[1], priority=20),
        quota("c", guaranteed=0, limit=limits[2], priority=30),
    ]
    ledger = Ledger(gpus, quotas)
    for op in ops:
        before = dict(ledger.allocations)
        if op[0] == "release":
            ledger.release(op[1])
            ledger.check()
            continue
        _, team, name, demand, replicas, kind = op
        serving = kind == "serving"
        kind = STABLE if serving else kind
        decision = ledger.place(Request(name, name, team, demand, replicas, kind, serving))
        ledger.check()
        if isinstance(decision, Waiting):
            assert ledger.allocations == before
            continue
        if name in before:
            assert decision == Placed(before[name])  # idempotent
            continue
        assert decision.allocation.borrowed is False or decision.allocation.kind is not PREVIEW
        gone = {n for n in before if n not in ledger.allocations}
        assert gone == set(decision.preempted)
        for victim in decision.preempted:
            lost = before[victim]
            assert not (lost.kind is STABLE and lost.serving)  # a serving stable stays
            if kind is PREVIEW:
                pytest.fail(f"preview {name} displaced {victim}")
        for n, kept in ledger.allocations.items():
            if n in before:
                assert kept.replicas == before[n].replicas  # nothing moves
    rebuilt, problems, _ = Ledger.rebuild(gpus, quotas, ledger.allocations.values())
    assert problems == []
    assert rebuilt.preview_used == ledger.preview_used
    assert rebuilt.used == ledger.used


def test_a_preview_converted_to_the_canary_keeps_its_gpus_and_leaves_the_preview_line() -> None:
    ledger = Ledger(inventory(n=[80, 80]), [quota("t", guaranteed=1, limit=2)])
    placed = ledger.place(preview("m/preview", gpus=1))
    assert isinstance(placed, Placed)
    assert ledger.team_preview_gpus("t") == 1.0
    converted = ledger.convert("m/preview", "m/canary", CANARY)
    assert converted is not None
    assert converted.kind is CANARY
    assert converted.replicas == placed.allocation.replicas
    assert ledger.team_preview_gpus("t") == 0.0
    assert ledger.team_gpus("t") == 1.0
    assert "m/preview" not in ledger.allocations
    ledger.check()
    assert ledger.convert("m/preview", "m/canary", CANARY) is None
