"""A CPU-only model through the reconciler, with the fakes of
:mod:`tests.unit.test_reconciler`: deployed and canaried to promotion beside a
GPU model that holds every GPU of the pool (and its team's whole quota), it
never waits for GPUs, holds none, and each of its releases starts with no
visible GPU -- also after a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.core.status import Phase
from controller.errors import Reason
from tests.unit.test_reconciler import SpecRepo as Repo
from tests.unit.test_reconciler import World, build, initial_files, model_yaml

GPU_MODEL = model_yaml("1").replace("{name: m}", "{name: g}").replace("{gpu: 1}", "{gpu: 2}")


def cpu_model(version: str, resources: str) -> str:
    return model_yaml(version).replace("{gpu: 1}", resources)


def _no_gpu(world: World) -> None:
    """``m`` holds nothing and every release of it sees no GPU."""
    assert world.model.gpus == ()
    assert not any(world.model.gpu_hours.values())
    for name, release in world.runtime.releases.items():
        if name.startswith("m/"):
            assert release.spec.env["CUDA_VISIBLE_DEVICES"] == "", (name, release.spec.env)
            assert release.spec.gpus == ()
            assert release.spec.gpu_share == 0
    assert all(c.reason != Reason.WAITING_FOR_GPUS for c in world.model.conditions)


@pytest.mark.parametrize(
    ("resources", "replicas"),
    [("{cpu: 2, memory: 2Gi}", 1), ('{cpu: "500m", replicas: 2}', 2), ("{memory: 1Gi}", 1)],
)
def test_a_cpu_model_is_deployed_and_canaried_to_promotion_holding_no_gpu(
    tmp_path: Path, resources: str, replicas: int
) -> None:
    repo = Repo(tmp_path / "models.git")
    files = initial_files() | {
        "models/m.yaml": cpu_model("1", resources),
        "models/g.yaml": GPU_MODEL,
        "artifacts/g.json": '{"w": 0}',
    }
    repo.commit(files, "a CPU model beside a GPU model that fills the pool")
    world = build(tmp_path, repo)
    world.passes(2)
    assert world.reconciler.statuses["g"].phase is Phase.HEALTHY
    assert sum(h.share for h in world.reconciler.statuses["g"].gpus) == 2  # the pool is full
    assert world.model.phase is Phase.HEALTHY
    assert len(world.runtime.started) == 1 + 1 + (replicas - 1)  # g, and m's replicas
    _no_gpu(world)

    repo.commit(
        {"models/m.yaml": cpu_model("2", resources), "artifacts/m-2.json": '{"w": 2}'},
        "m version 2",
    )
    world.passes(2)  # the canary starts, though no GPU is free, and takes its weight
    canarying = world.model
    assert canarying.phase is Phase.PROGRESSING
    assert canarying.canary is not None
    _no_gpu(world)
    for _ in range(15):
        world.serve(40)
        world.passes(1, step=5)
        _no_gpu(world)
        if world.model.phase is Phase.HEALTHY:
            break
    assert world.model.phase is Phase.HEALTHY
    assert world.model.stable is not None
    assert world.model.stable.version == "2"
    assert world.reconciler.verdicts.get(("m", "pass"), 0) >= 1
    assert world.repo.status().gpus == ()  # what the status branch says, too
    assert sum(h.share for h in world.reconciler.statuses["g"].gpus) == 2  # g untouched
    running = {n for n in world.runtime.running() if n.startswith("m/")}
    assert len(running) == replicas

    again = world.restart()
    again.passes(3)
    assert again.model.phase is Phase.HEALTHY
    assert {n for n in again.runtime.running() if n.startswith("m/")} == running  # adopted
    _no_gpu(again)
