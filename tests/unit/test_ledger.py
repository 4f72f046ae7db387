"""The GPU ledger, table first: fits and misfits, fractions, multi-GPU replicas,
quotas, borrowing and give-back, preemption order, canary reservations,
rebuild after restart -- and a property test that nothing ever over-commits."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.allocation import (
    MEMORY_LIMIT_ENV,
    Allocation,
    Demand,
    Placed,
    ReleaseKind,
    Request,
    Slice,
    Waiting,
    allocations_from_status,
    holds_of,
    launch_env,
)
from controller.core.inventory import GPU
from controller.core.ledger import Ledger
from controller.core.status import ModelStatus, Phase, parse_model_status, render
from controller.spec.kinds import Quota

GiB = 2**30


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
    replicas: int = 1,
    kind: ReleaseKind = ReleaseKind.STABLE,
    serving: bool = False,
) -> Request:
    demand = Demand(gpus=gpus, fraction=fraction, memory=memory * GiB)
    return Request(
        release, release.split("/", maxsplit=1)[0], team, demand, replicas, kind, serving
    )


def placed(decision: Any) -> Allocation:
    assert isinstance(decision, Placed), decision
    return decision.allocation


def where(allocation: Allocation) -> list[list[str]]:
    return [[s.gpu for s in replica] for replica in allocation.replicas]


# -- placement ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "request_", "gpus"),
    [
        # best fit: one GPU goes to the node with the fewest untouched GPUs
        ([], req("m", gpus=1), [["b0"]]),
        ([], req("m", gpus=2), [["b0", "b1"]]),
        ([], req("m", gpus=4), [["a0", "a1", "a2", "a3"]]),
        # two replicas are spread over nodes
        ([], req("m", gpus=1, replicas=2), [["b0"], ["a0"]]),
        # shares pack onto the partly used GPU, keeping whole GPUs free
        ([req("x", fraction=0.5)], req("m", fraction=0.5), [["b0"]]),
        ([req("x", fraction=0.5)], req("m", gpus=2), [["a0", "a1"]]),
        # memory: the tightest partly used GPU that holds it
        ([req("x", memory=30)], req("m", memory=10), [["b0"]]),
        ([req("x", memory=30)], req("m", memory=60), [["a0"]]),
    ],
)
def test_placement(before: list[Request], request_: Request, gpus: list[list[str]]) -> None:
    ledger = Ledger(inventory(a=[80] * 4, b=[40] * 2), [quota("t")])
    for r in before:
        placed(ledger.place(r))
    assert where(placed(ledger.place(request_))) == gpus
    ledger.check()


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (req("m", gpus=5), ["m needs 1 x 5 GPUs", "4 free on a", "2 free on b"]),
        (req("m", memory=100), ["m needs 1 x 100Gi of one GPU", "largest free share 80Gi"]),
        (req("m", gpus=4, replicas=2), ["m needs 2 x 4 GPUs"]),
        (req("m", gpus=1, team="nobody"), ["team nobody has no quota"]),
    ],
)
def test_misfits_wait_with_numbers_and_change_nothing(request_: Request, words: list[str]) -> None:
    ledger = Ledger(inventory(a=[80] * 4, b=[40] * 2), [quota("t")])
    decision = ledger.place(request_)
    assert isinstance(decision, Waiting)
    for word in words:
        assert word in decision.reason
    assert ledger.free_gpus() == 6
    assert ledger.allocations == {}


def test_stranded_capacity_is_reported() -> None:
    ledger = Ledger(inventory(a=[80] * 2), [quota("t")])
    placed(ledger.place(req("x", fraction=0.25)))
    placed(ledger.place(req("y", fraction=0.5)))
    assert ledger.stranded() == (0.25, 1)  # one GPU, a quarter free, useless to whole requests
    assert ledger.free_gpus() == pytest.approx(1.25)


# -- quotas, borrowing, give-back ---------------------------------------------


def test_limit_is_never_exceeded() -> None:
    ledger = Ledger(inventory(a=[80] * 8), [quota("t", guaranteed=1, limit=2)])
    placed(ledger.place(req("x", gpus=2)))
    decision = ledger.place(req("y", fraction=0.5))
    assert isinstance(decision, Waiting)
    assert "team t: 2 of limit 2 GPUs held" in decision.reason


def test_memory_request_over_limit_is_found_after_placing_and_undone() -> None:
    ledger = Ledger(inventory(a=[40, 40]), [quota("t", guaranteed=1, limit=1.5)])
    placed(ledger.place(req("x", gpus=1)))
    decision = ledger.place(req("y", memory=30))  # 30/40 = 0.75 GPU
    assert isinstance(decision, Waiting)
    assert "team t: 1 of limit 1.5" in decision.reason
    assert ledger.free_gpus() == 1
    ledger.check()


def test_borrowing_above_the_guarantee_is_marked() -> None:
    ledger = Ledger(inventory(a=[80] * 4), [quota("t", guaranteed=1, limit=4)])
    assert placed(ledger.place(req("x", gpus=1))).borrowed is False
    assert placed(ledger.place(req("y", gpus=1))).borrowed is True


QUOTAS = [
    quota("fraud", guaranteed=2, limit=4, priority=200),
    quota("search", guaranteed=1, limit=4, priority=100),
    quota("ads", guaranteed=1, limit=4, priority=50),
]


@pytest.mark.parametrize(
    ("held", "ask", "outcome"),
    [
        # search borrowed 2 (canaries); fraud asks within its guarantee: search gives
        # back one (1 GPU was free), its newest
        (
            [("search", "s1", 1, False), ("search", "s2", 1, False), ("search", "s3", 1, False)],
            ("fraud", 2),
            ["s3"],
        ),
        # fraud asks for the whole pool's worth within its guarantee: both borrowed go
        (
            [
                ("search", "s1", 1, False),
                ("search", "s2", 1, False),
                ("search", "s3", 1, False),
                ("ads", "d1", 1, False),
            ],
            ("fraud", 2),
            ["s3", "s2"],
        ),
        # the lower priority gives back first, then the newest
        (
            [
                ("search", "s1", 1, False),
                ("ads", "d1", 1, False),
                ("ads", "d2", 1, False),
                ("search", "s2", 1, False),
            ],
            ("fraud", 1),
            ["d2"],
        ),
        # a stable release serving traffic is never preempted
        (
            [
                ("search", "s1", 1, True),
                ("search", "s2", 1, True),
                ("search", "s3", 1, True),
                ("search", "s4", 1, True),
            ],
            ("fraud", 1),
            "waits",
        ),
        # never below the borrower's own guarantee: s1 is search's guaranteed GPU
        (
            [
                ("search", "s1", 1, False),
                ("fraud", "f1", 1, False),
                ("fraud", "f2", 1, False),
                ("fraud", "f3", 1, False),
            ],
            ("ads", 1),
            ["f3"],
        ),
        # above its guarantee a team only borrows what is free: no preemption
        (
            [
                ("search", "s1", 1, False),
                ("search", "s2", 1, False),
                ("search", "s3", 1, False),
                ("fraud", "f1", 1, False),
            ],
            ("fraud", 2),
            "waits",
        ),
    ],
)
def test_give_back(
    held: list[tuple[str, str, int, bool]], ask: tuple[str, int], outcome: Any
) -> None:
    ledger = Ledger(inventory(a=[80] * 4), QUOTAS)
    for team, name, count, serving in held:
        kind = ReleaseKind.STABLE if serving else ReleaseKind.CANARY
        placed(ledger.place(req(name, team, gpus=count, kind=kind, serving=serving)))
    decision = ledger.place(req("new", ask[0], gpus=ask[1]))
    if outcome == "waits":
        assert isinstance(decision, Waiting)
        assert ask[0] in decision.reason
    else:
        assert isinstance(decision, Placed)
        assert list(decision.preempted) == outcome
        for name in outcome:
            assert name not in ledger.allocations
    ledger.check()


# -- canary reservations and what-ifs -----------------------------------------


def test_canary_holds_beside_stable_until_promotion_or_rollback() -> None:
    ledger = Ledger(inventory(a=[80] * 2), [quota("t", guaranteed=2, limit=2)])
    placed(ledger.place(req("m/stable", gpus=1, serving=True)))
    placed(ledger.place(req("m/canary", gpus=1, kind=ReleaseKind.CANARY)))
    assert ledger.team_gpus("t") == 2
    waiting = ledger.place(req("other/stable", gpus=1))
    assert isinstance(waiting, Waiting)  # the canary's reservation is real
    ledger.release("m/canary")  # rollback
    assert ledger.team_gpus("t") == 1
    placed(ledger.place(req("m/canary", gpus=1, kind=ReleaseKind.CANARY)))
    ledger.release("m/stable")  # promotion: the old stable goes only now
    assert set(ledger.allocations) == {"m/canary"}
    ledger.check()


def test_what_if_changes_nothing() -> None:
    ledger = Ledger(inventory(a=[80] * 4), QUOTAS)
    for name in ("s1", "s2", "s3"):
        placed(ledger.place(req(name, "search", gpus=1, kind=ReleaseKind.CANARY)))
    trial = ledger.clone()
    decision = trial.place(req("new", "fraud", gpus=2))
    assert isinstance(decision, Placed)
    assert decision.preempted == ("s3",)
    assert set(ledger.allocations) == {"s1", "s2", "s3"}  # the original is untouched
    assert ledger.team_gpus("search") == 3
    ledger.check()
    trial.check()


def test_placing_the_same_release_twice_is_idempotent() -> None:
    ledger = Ledger(inventory(a=[80] * 2), [quota("t")])
    first = placed(ledger.place(req("m", gpus=1)))
    assert placed(ledger.place(req("m", gpus=1))) == first
    assert ledger.team_gpus("t") == 1


# -- restart -------------------------------------------------------------------


def test_rebuild_from_records() -> None:
    gpus = inventory(a=[80] * 2, b=[80])
    ledger = Ledger(gpus, [quota("t")])
    records = [placed(ledger.place(req(n, fraction=0.5))) for n in ("x", "y", "z")]
    rebuilt, problems, replace = Ledger.rebuild(gpus, [quota("t")], reversed(records))
    assert (problems, replace) == ([], [])
    assert rebuilt.allocations == ledger.allocations
    assert rebuilt.free_gpus() == ledger.free_gpus()
    assert rebuilt.team_gpus("t") == 1.5
    rebuilt.check()


def test_rebuild_finds_vanished_and_double_booked_gpus() -> None:
    gpus = inventory(a=[80] * 2)
    one = Allocation(
        "x",
        "x",
        "t",
        ReleaseKind.STABLE,
        True,
        False,
        ((Slice("a0", "a", 80 * GiB, 1000),),),
        order=1,
    )
    two = Allocation(
        "y",
        "y",
        "t",
        ReleaseKind.STABLE,
        True,
        False,
        ((Slice("a0", "a", 80 * GiB, 1000),),),
        order=2,
    )
    gone = Allocation(
        "z",
        "z",
        "t",
        ReleaseKind.STABLE,
        True,
        False,
        ((Slice("a9", "a", 80 * GiB, 1000),),),
        order=3,
    )
    ledger, problems, replace = Ledger.rebuild(gpus, [quota("t")], [gone, two, one])
    assert replace == ["y", "z"]
    assert "double-booked" in problems[0]
    assert "a9" in problems[1]
    assert "gone" in problems[1]
    assert set(ledger.allocations) == {"x"}
    ledger.check()


# -- enforcement -----------------------------------------------------------------


def test_launch_env() -> None:
    ledger = Ledger(inventory(a=[80] * 4), [quota("t")])
    whole = placed(ledger.place(req("w", gpus=2)))
    share = placed(ledger.place(req("s", memory=20)))
    assert launch_env(whole.replicas[0]) == {
        "CUDA_VISIBLE_DEVICES": "a0,a1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    env = launch_env(share.replicas[0])
    assert env["CUDA_VISIBLE_DEVICES"] == "a2"
    assert env[MEMORY_LIMIT_ENV] == str(20 * GiB)


# -- the property: no sequence over-commits --------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("place"),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"]),
            st.one_of(
                st.builds(Demand, gpus=st.integers(1, 3)),
                st.builds(Demand, fraction=st.sampled_from([0.1, 0.25, 0.5, 0.75])),
                st.builds(Demand, memory=st.sampled_from([5 * GiB, 20 * GiB, 39 * GiB, 70 * GiB])),
            ),
            st.integers(1, 3),
            st.booleans(),
        ),
        st.tuples(
            st.just("release"), st.sampled_from(["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"])
        ),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=operations,
    sizes=st.lists(
        st.lists(st.sampled_from([40, 80]), min_size=1, max_size=4), min_size=1, max_size=3
    ),
    limits=st.tuples(st.integers(0, 4), st.integers(0, 6), st.integers(0, 6)),
)
def test_no_sequence_over_commits_a_gpu_or_a_quota(
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
        if op[0] == "release":
            ledger.release(op[1])
        else:
            _, team, name, demand, replicas, serving = op
            before = {u: s.free for u, s in ledger.gpus.items()}
            known = name in ledger.allocations
            kind = ReleaseKind.STABLE if serving else ReleaseKind.CANARY
            decision = ledger.place(Request(name, name, team, demand, replicas, kind, serving))
            if isinstance(decision, Waiting):
                assert {u: s.free for u, s in ledger.gpus.items()} == before
            elif not known:  # a known release gets its allocation back, as it was
                held = [s for r in decision.allocation.replicas for s in r]
                assert len(decision.allocation.replicas) == replicas
                assert all(s.gpu in ledger.gpus for s in held)
                if demand.gpus:
                    assert all(len({s.node for s in r}) == 1 for r in decision.allocation.replicas)
        ledger.check()


def test_status_records_rebuild_the_same_ledger() -> None:
    """Placements -> status files -> parsed back -> rebuilt ledger: the same books."""
    gpus = inventory(a=[80] * 4, b=[40] * 2)
    quotas = [quota("t", guaranteed=2, limit=8)]
    ledger = Ledger(gpus, quotas)
    placed(ledger.place(req("m/stable", gpus=1, replicas=2, serving=True)))
    placed(ledger.place(req("m/canary", fraction=0.5, replicas=2, kind=ReleaseKind.CANARY)))
    placed(ledger.place(req("n/stable", memory=10, serving=True)))
    statuses = []
    for model in ("m", "n"):
        holds = tuple(
            hold
            for a in ledger.allocations.values()
            if a.model == model
            for hold in holds_of(a, "2026-11-27T10:00:00Z")
        )
        raw = render(ModelStatus(model, Phase.PROGRESSING, team="t", gpus=holds))
        statuses.append(parse_model_status(f"models/{model}.yaml", raw))
    memory_of = {g.uuid: g.memory for g in gpus}
    records = [a for i, s in enumerate(statuses) for a in allocations_from_status(s, memory_of, i)]
    rebuilt, problems, again = Ledger.rebuild(gpus, quotas, records)
    assert (problems, again) == ([], [])
    assert {u: s.free for u, s in rebuilt.gpus.items()} == {
        u: s.free for u, s in ledger.gpus.items()
    }
    assert rebuilt.team_gpus("t") == ledger.team_gpus("t")
    assert {n: where(a) for n, a in rebuilt.allocations.items()} == {
        n: where(a) for n, a in ledger.allocations.items()
    }
    rebuilt.check()
    # a GPU that vanished from the inventory while held: that release is placed again
    smaller = [g for g in gpus if g.uuid != where(ledger.allocations["m/stable"])[0][0]]
    _, problems, again = Ledger.rebuild(smaller, quotas, records)
    assert again == ["m/stable"]
    assert "gone" in problems[0]


def test_preemption_reasons_name_the_numbers() -> None:
    ledger = Ledger(inventory(a=[80] * 4), QUOTAS)
    for name in ("s1", "s2", "s3", "s4"):
        placed(ledger.place(req(name, "search", gpus=1, kind=ReleaseKind.CANARY)))
    decision = ledger.place(req("f", "fraud", gpus=1))
    assert isinstance(decision, Placed)
    (reason,) = decision.reasons
    assert reason.startswith("s4 gives back 1 GPU borrowed by team search (holding 4, guaranteed 1")
    assert "within team fraud's guarantee of 2" in reason


def test_promotion_renames_the_canary_allocation() -> None:
    ledger = Ledger(inventory(a=[80] * 2), [quota("t", guaranteed=2, limit=2)])
    placed(ledger.place(req("m/stable", gpus=1, serving=True)))
    canary = placed(ledger.place(req("m/canary", gpus=1, kind=ReleaseKind.CANARY)))
    ledger.release("m/stable")
    promoted = ledger.rename("m/canary", "m/stable")
    assert promoted is not None
    assert (promoted.release, promoted.kind, promoted.serving) == (
        "m/stable",
        ReleaseKind.STABLE,
        True,
    )
    assert where(promoted) == where(canary)
    assert set(ledger.allocations) == {"m/stable"}
    ledger.check()
    assert ledger.release("m/stable") is not None
    assert ledger.free_gpus() == 2
    placed(ledger.place(req("x", gpus=1)))
    placed(ledger.place(req("y", gpus=1)))
    with pytest.raises(ValueError, match="already holds"):
        ledger.rename("x", "y")


def test_resize_keeps_what_survives_and_frees_what_lost_its_gpus() -> None:
    ledger = Ledger(inventory(a=[40, 40], b=[40, 40]), [quota("t", 2, 4), quota("u", 1, 2)])
    on_a = placed(ledger.place(req("x/stable", gpus=2)))
    on_b = placed(ledger.place(req("y/stable", "u", fraction=0.5)))
    assert {s.node for r in on_a.replicas for s in r} == {"a"}
    assert {s.node for r in on_b.replicas for s in r} == {"b"}
    # node b leaves, node c joins
    lost = ledger.resize(inventory(a=[40, 40], c=[80]))
    assert [a.release for a in lost] == ["y/stable"]
    ledger.check()
    assert set(ledger.allocations) == {"x/stable"}
    assert ledger.allocations["x/stable"].replicas == on_a.replicas  # kept, same GPUs
    assert ledger.team_gpus("u") == 0
    # the lost release is placed again on what is left: node c
    again = placed(ledger.place(req("y/stable", "u", fraction=0.5)))
    assert {s.node for r in again.replicas for s in r} == {"c"}
    ledger.check()
    # nothing left for a whole GPU more than the quota allows, and the reason says so
    assert isinstance(ledger.place(req("z/stable", gpus=3)), Waiting)
