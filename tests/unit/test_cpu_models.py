"""CPU-only models (issue 19, item 4): ``resources`` that ask for no GPU
(``cpu``/``memory`` only, no ``gpu`` or ``gpuMemory``) validate, are placed without booking
any GPU or quota, start with no visible GPU, and the plan says "CPU only"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from controller.core.allocation import (
    Demand,
    Placed,
    ReleaseKind,
    Request,
    launch_env,
    request_for,
)
from controller.core.demand import canary_checks, gpu_equivalent, summarize, team_usage
from controller.core.inventory import GPU, build_inventory
from controller.core.ledger import Ledger
from controller.core.pr_plan import plan_change, render_markdown, render_text
from controller.core.status import GPUHold, ModelStatus, Phase
from controller.spec.kinds import Quota, Resources
from controller.spec.loader import LoadResult, load_desired
from controller.spec.tree import DirTree
from controller.ui.pool_view import pool_report, recorded_holdings, render
from tests.conftest import FIXTURES

GiB = 2**30


def _repo(tmp_path: Path, resources: str, sharing: str = "Fractional") -> Path:
    """The base fixture repository with ``resources`` (lines under ``resources:``)."""
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "base", repo)
    model = repo / "models" / "model.yaml"
    text = model.read_text()
    assert "  resources:\n    gpu: 1\n" in text
    model.write_text(text.replace("  resources:\n    gpu: 1\n", f"  resources:\n{resources}"))
    pool = repo / "pools" / "pool.yaml"
    pool.write_text(pool.read_text().replace("sharing: Fractional", f"sharing: {sharing}"))
    return repo


def _load(repo: Path) -> LoadResult:
    return load_desired(DirTree(repo))


# -- the spec ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "sharing", "cpu", "memory", "cpu_only", "described"),
    [
        (
            "    cpu: 2\n    memory: 2Gi\n",
            "Fractional",
            2.0,
            2 * GiB,
            True,
            "CPU only (2 CPU, 2Gi)",
        ),
        ('    cpu: "500m"\n', "Fractional", 0.5, None, True, "CPU only (0.5 CPU)"),
        ("    memory: 512Mi\n", "Fractional", None, 512 * 2**20, True, "CPU only (512Mi)"),
        ("    cpu: 1\n    replicas: 3\n", "Fractional", 1.0, None, True, "3 x CPU only (1 CPU)"),
        # no share of a GPU: fine in a pool that shares whole GPUs only
        ("    cpu: 4\n", "Whole", 4.0, None, True, "CPU only (4 CPU)"),
        # a GPU model may say what CPU and memory it needs too
        ("    gpu: 1\n    cpu: 4\n    memory: 8Gi\n", "Fractional", 4.0, 8 * GiB, False, "1 GPU"),
    ],
)
def test_resources_that_ask_for_no_gpu_are_valid(
    tmp_path: Path,
    resources: str,
    sharing: str,
    cpu: float | None,
    memory: int | None,
    cpu_only: bool,
    described: str | None,
) -> None:
    result = _load(_repo(tmp_path, resources, sharing))
    assert result.ok, [d.render() for d in result.diagnostics]
    res = result.desired.models["model-a"].resources
    assert res.cpu == cpu
    assert res.memory == memory
    assert res.cpu_only is cpu_only
    if described is not None:
        assert res.describe() == described
    assert Demand.of(res).cpu_only is cpu_only


@pytest.mark.parametrize(
    ("resources", "line", "path", "rule", "words"),
    [
        ("    cpu: -1\n", 12, "spec.resources.cpu", "schema.exclusiveMinimum", "> 0"),
        ("    cpu: 0\n", 12, "spec.resources.cpu", "schema.exclusiveMinimum", "> 0"),
        ('    cpu: "0m"\n', 12, "spec.resources.cpu", "resources.cpu", "more than 0"),
        ('    cpu: "two"\n', 12, "spec.resources.cpu", "schema.pattern", "500m"),
        ("    cpu: 5000\n", 12, "spec.resources.cpu", "schema.maximum", "<= 1024"),
        ("    cpu: true\n", 12, "spec.resources.cpu", "schema.type", "number or a string"),
        ('    memory: "0"\n', 12, "spec.resources.memory", "resources.memory", "more than 0"),
        # no GPU is said by leaving gpu out, as in Kubernetes
        ("    gpu: 0\n    cpu: 1\n", 12, "spec.resources.gpu", "schema.exclusiveMinimum", "> 0"),
        ("    gpu: 1\n    gpuMemory: 8Gi\n", 11, "spec.resources", "resources.gpu", "only one"),
        # nothing asked at all: say what each replica needs
        ("    replicas: 2\n", 11, "spec.resources", "resources.gpu", "cpu"),
    ],
)
def test_nonsense_cpu_resources_are_refused_with_file_and_line(
    tmp_path: Path, resources: str, line: int, path: str, rule: str, words: str
) -> None:
    result = _load(_repo(tmp_path, resources))
    found = [(d.file, d.line, d.path, d.rule) for d in result.diagnostics]
    assert found == [("models/model.yaml", line, path, rule)], found
    assert words in result.diagnostics[0].message, result.diagnostics[0].message
    assert "model-a" not in result.desired.models


# -- the ledger ----------------------------------------------------------------------


def _gpus(count: int) -> list[GPU]:
    return [GPU("n1", i, f"g{i}", "L4", 24 * GiB, declared=True) for i in range(count)]


CPU = Resources(gpu=None, gpu_memory=None, replicas=1, cpu=2.0, memory=2 * GiB)


@pytest.mark.parametrize(
    ("resources", "gpus", "held_before", "replicas"),
    [
        (CPU, 2, 0, 1),
        (Resources(gpu=None, gpu_memory=None, replicas=3, cpu=0.5), 2, 0, 3),
        # a pool whose GPUs are all held, by a team at its limit: it still runs
        (CPU, 2, 2, 1),
        # a pool with no GPU at all
        (CPU, 0, 0, 1),
    ],
)
def test_a_cpu_release_is_placed_without_booking_any_gpu_or_quota(
    resources: Resources, gpus: int, held_before: int, replicas: int
) -> None:
    ledger = Ledger(_gpus(gpus), [Quota("t", 2, 2, 100)])
    if held_before:
        other = Request("g/stable", "g", "t", Demand(gpus=held_before), 1)
        assert isinstance(ledger.place(other), Placed)
    free, used, allocations = ledger.free_gpus(), ledger.team_gpus("t"), dict(ledger.allocations)
    for kind in (ReleaseKind.STABLE, ReleaseKind.CANARY):
        decision = ledger.place(request_for("m", "t", resources, kind))
        assert isinstance(decision, Placed), decision
        allocation = decision.allocation
        assert allocation.replicas == ((),) * replicas  # one replica each, on no GPU
        assert allocation.units == 0
        assert not allocation.borrowed
        assert decision.preempted == ()
    assert ledger.free_gpus() == free
    assert ledger.team_gpus("t") == used
    assert ledger.allocations == allocations  # nothing booked, nothing to give back
    ledger.check()


def test_a_cpu_release_of_a_team_without_quota_waits() -> None:
    ledger = Ledger(_gpus(1), [Quota("t", 1, 1, 100)])
    decision = ledger.place(request_for("m", "other", CPU, ReleaseKind.STABLE))
    assert not isinstance(decision, Placed)
    assert "no quota" in decision.reason


@pytest.mark.parametrize(
    ("replica", "visible", "limit"),
    [
        ((), "", False),  # a CPU release: no GPU visible, even if the controller sees some
    ],
)
def test_a_cpu_replica_sees_no_gpu(replica: tuple[()], visible: str, limit: bool) -> None:
    env = launch_env(replica)
    assert env["CUDA_VISIBLE_DEVICES"] == visible
    assert ("MDC_GPU_MEMORY_LIMIT_BYTES" in env) is limit


@pytest.mark.parametrize(
    ("demand", "cpu_only", "text"),
    [
        (Demand(), True, "no GPU (CPU only)"),
        (Demand(gpus=1), False, "1 GPU"),
        (Demand(fraction=0.5), False, "0.5 GPU"),
        (Demand(memory=GiB), False, "1Gi of one GPU"),
    ],
)
def test_demand_says_when_it_is_cpu_only(demand: Demand, cpu_only: bool, text: str) -> None:
    assert demand.cpu_only is cpu_only
    assert demand.describe() == text


# -- the plan ------------------------------------------------------------------------


def test_the_plan_counts_no_gpu_for_a_cpu_model(tmp_path: Path) -> None:
    desired = _load(_repo(tmp_path, "    cpu: 2\n    memory: 2Gi\n")).desired
    model, pool = desired.models["model-a"], desired.pools["pool-a"]
    assert gpu_equivalent(model, pool) == 0
    (usage,) = team_usage(desired)
    assert usage.requested == 0
    assert usage.canary_peak == 0
    assert usage.verdict == "ok"
    (check,) = canary_checks(desired)
    assert check.fits
    assert check.cpu_only
    assert check.gpu_hours_per_day == 0
    assert check.describe() == "model-a: CPU only: a canary holds no GPU"
    summary = summarize(desired)
    assert summary["models"][0]["resources"] == "CPU only (2 CPU, 2Gi)"
    assert summary["models"][0]["gpus"] == 0


@pytest.mark.parametrize(
    ("before", "after", "gpus", "canary"),
    [
        # a GPU model becomes a CPU model: the plan says it holds none now
        ("    gpu: 1\n", "    cpu: 2\n", "0", "CPU only: a canary holds no GPU"),
        ("    cpu: 1\n", "    cpu: 2\n    memory: 1Gi\n", "0", "CPU only: a canary holds no GPU"),
        ("    cpu: 1\n", "    gpu: 1\n", "1", "a canary fits beside the stable release"),
    ],
)
def test_the_pr_plan_says_cpu_only_instead_of_gpus(
    tmp_path: Path, before: str, after: str, gpus: str, canary: str
) -> None:
    base = _repo(tmp_path / "base", before)
    head = _repo(tmp_path / "head", after)
    plan = plan_change(DirTree(base), DirTree(head), "b" * 40, "h" * 40)
    assert plan.applicable, plan.reasons
    (change,) = plan.models
    assert change.change == "changed"
    assert f"{float(gpus):g}" == f"{change.gpus:g}"
    row = next(line for line in render_markdown(plan).splitlines() if line.startswith("| model-a"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    cpu_only = gpus == "0"
    assert change.cpu_only is cpu_only
    assert cells[3] == ("0 (CPU only)" if cpu_only else gpus)  # the GPUs column
    assert (cells[4] == "0") is cpu_only  # GPU-hours per day
    assert canary in cells[5]
    text = render_text(plan)
    assert "model-a: changed" in text
    assert ("(CPU only, 0 GPU-h/day)" in text) is cpu_only


# -- mdc pool ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "line"),
    [
        (0.0, "  holding no GPU: m"),  # a CPU-only model: listed, holding nothing
        (1.0, None),
    ],
)
def test_mdc_pool_shows_a_cpu_model_holding_nothing(held: float, line: str | None) -> None:
    repo = load_desired(DirTree(FIXTURES / "base"))
    pool = repo.desired.pools["pool-a"]
    inventory = build_inventory(pool, {})
    gpu = inventory.gpus[0]
    holds = (GPUHold(gpu.node, gpu.uuid, held, "stable"),) if held else ()
    statuses = [ModelStatus("m", Phase.HEALTHY, team="team-a", gpus=holds)]
    report = pool_report(
        pool, inventory, recorded_holdings(statuses), "recorded", statuses=statuses
    )
    assert report["models"] == [{"model": "m", "team": "team-a", "held": held}]
    (team,) = report["teams"]
    assert team["held"] == held
    assert report["free"] == 2 - held
    lines = render(report)
    assert (line in lines) if line is not None else not any("no GPU" in x for x in lines)
