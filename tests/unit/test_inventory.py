"""Inventory: declared vs discovered GPUs, disagreements, NVML's error paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from controller.adapters.nvml import NVMLUnavailable, read_nvml
from controller.core.inventory import (
    GPU,
    ClusterNode,
    build_inventory,
    cluster_inventory,
    declared_gpus,
    node_changes,
    node_labels,
    real_uuid,
)
from controller.spec.kinds import GPUPool
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO

GiB = 2**30


class FakeNVML:
    """Behaves like pynvml: the same exception classes and call shapes."""

    class NVMLError(Exception):
        pass

    class NVMLError_LibraryNotFound(NVMLError):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_Unknown(NVMLError):
        pass

    def __init__(self, gpus: list[dict[str, Any]], fail: str | None = None) -> None:
        self.gpus = gpus
        self.fail = fail
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail == "init-missing":
            raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")
        if self.fail == "init-other":
            raise self.NVMLError_Unknown("Unknown Error")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        if self.fail == "count":
            raise self.NVMLError_Unknown("GPU is lost")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=self.gpus[h]["memory"], used=self.gpus[h].get("used", 0))

    def nvmlDeviceGetUUID(self, h: int) -> Any:
        return self.gpus[h]["uuid"]

    def nvmlDeviceGetName(self, h: int) -> Any:
        return self.gpus[h]["name"]

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        if "util" not in self.gpus[h]:
            raise self.NVMLError_NotSupported("Not Supported")
        return SimpleNamespace(gpu=self.gpus[h]["util"], memory=0)

    def nvmlDeviceGetMigMode(self, h: int) -> tuple[int, int]:
        if "mig" not in self.gpus[h]:
            raise self.NVMLError_NotSupported("Not Supported")
        return (self.gpus[h]["mig"], self.gpus[h]["mig"])


H100 = {
    "uuid": "GPU-aaa",
    "name": "NVIDIA H100 80GB HBM3",
    "memory": 81559 * 2**20,
    "util": 7,
    "mig": 0,
    "used": 2**30,
}


def test_read_nvml_maps_every_field() -> None:
    nvml = FakeNVML([H100, {"uuid": b"GPU-bbb", "name": b"NVIDIA L4", "memory": 24 * GiB}])
    gpus = read_nvml("node-a", nvml)
    assert gpus == [
        GPU("node-a", 0, "GPU-aaa", "NVIDIA H100 80GB HBM3", 81559 * 2**20, False, 2**30, 7, False),
        GPU("node-a", 1, "GPU-bbb", "NVIDIA L4", 24 * GiB, False, 0, None, None),
    ]
    assert nvml.shutdowns == 1


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        ("init-missing", "NVML library not found"),
        ("init-other", "NVML failed to start"),
        ("count", "NVML query failed: GPU is lost"),
    ],
)
def test_read_nvml_errors_are_transient(fail: str, message: str) -> None:
    with pytest.raises(NVMLUnavailable, match=message) as caught:
        read_nvml("node-a", FakeNVML([H100], fail=fail))
    assert caught.value.reason == "NVMLUnavailable"
    assert caught.value.retry_after > 0


@pytest.fixture
def pool(make_repo: Callable[..., Path]) -> Callable[[str], GPUPool]:
    def make(nodes_yaml: str) -> GPUPool:
        repo = make_repo()
        text = (repo / "pools" / "pool.yaml").read_text()
        start, end = text.index("  nodes:"), text.index("  quotas:")
        (repo / "pools" / "pool.yaml").write_text(text[:start] + nodes_yaml + text[end:])
        result = load_desired(DirTree(repo))
        assert "pool-a" in result.desired.pools, result.diagnostics
        return result.desired.pools["pool-a"]

    return make


NVML_NODE = """  nodes:
    - name: node-1
      discovery: NVML
"""
NVML_NODE_DECLARED = (
    NVML_NODE
    + """      gpus:
        - product: NVIDIA H100 80GB HBM3
          memory: 80Gi
          count: 2
"""
)


def found(*gpus: dict[str, Any]) -> list[GPU]:
    return read_nvml("node-1", FakeNVML(list(gpus)))


@pytest.mark.parametrize(
    ("nodes", "discovered", "uuids", "problems"),
    [
        # NVML node, nothing declared, NVML works: discovered GPUs only
        (NVML_NODE, {"node-1": found(H100)}, ["GPU-aaa"], []),
        # declared and seen alike (80Gi declared, 79.6 GiB seen): agreement
        (
            NVML_NODE_DECLARED,
            {"node-1": found(H100, H100 | {"uuid": "GPU-ccc"})},
            ["GPU-aaa", "GPU-ccc"],
            [],
        ),
        # one declared GPU missing
        (
            NVML_NODE_DECLARED,
            {"node-1": found(H100)},
            ["GPU-aaa"],
            ["declared but not seen: 1 x NVIDIA H100 80GB HBM3 (80Gi)"],
        ),
        # NVML failed: fall back to the declared GPUs, and say so
        (
            NVML_NODE_DECLARED,
            {"node-1": NVMLUnavailable("no driver")},
            ["declared-pool-a-node-1-0", "declared-pool-a-node-1-1"],
            ["no driver; using the 2 declared"],
        ),
        # node not read at all and nothing declared: no GPUs, said plainly
        (NVML_NODE, {}, [], ["NVML was not read there; no GPUs are usable"]),
        # another product than declared
        (
            NVML_NODE_DECLARED,
            {
                "node-1": found(
                    H100 | {"name": "NVIDIA A100-SXM4-40GB", "memory": 40 * GiB},
                    H100 | {"uuid": "GPU-ccc"},
                )
            },
            ["GPU-aaa", "GPU-ccc"],
            ["seen but not declared: 1 x NVIDIA A100-SXM4-40GB (40Gi)"],
        ),
    ],
)
def test_build_inventory(
    pool: Callable[[str], GPUPool],
    nodes: str,
    discovered: dict[str, Any],
    uuids: list[str],
    problems: list[str],
) -> None:
    inventory = build_inventory(pool(nodes), discovered)
    assert [g.uuid for g in inventory.gpus] == uuids
    assert len(inventory.disagreements) == len(problems)
    for text, expected in zip(inventory.disagreements, problems, strict=True):
        assert expected in text
        assert "node-1" in text


def test_declared_gpus_are_always_labelled_declared() -> None:
    desired = load_desired(DirTree(EXAMPLE_REPO)).desired
    pool = desired.pools["shared-a100"]
    inventory = build_inventory(pool, {"gpu-node-a": [GPU("x", 0, "GPU-zzz", "p", GiB, False)]})
    assert inventory.declared_count == 8
    assert inventory.discovered_count == 0  # gpu-node-a is Declared: NVML is not consulted
    assert {g.source for g in inventory.gpus} == {"declared"}
    assert [g.uuid for g in declared_gpus(pool, "gpu-node-b")][:2] == [
        "declared-shared-a100-gpu-node-b-0",
        "declared-shared-a100-gpu-node-b-1",
    ]


# -- pools whose nodes come from the cluster ------------------------------------------

CLUSTER_POOL = """  cluster:
    discovery: {discovery}
    nodeSelector: {selector}
"""

H100_PRODUCT = "NVIDIA H100 80GB HBM3"
LABELS_A100 = {"mdc.dev/gpu-product": "A100", "mdc.dev/gpu-memory": "40Gi", "zone": "eu"}


def cluster_node(
    name: str, labels: dict[str, str], gpus: int, nvml: tuple[GPU, ...] | str = "no driver"
) -> ClusterNode:
    return ClusterNode(name, labels, gpus, nvml)


def nvml_gpus(node: str, count: int) -> tuple[GPU, ...]:
    return tuple(
        GPU(node, i, f"GPU-{node}-{i}", H100_PRODUCT, 80 * 2**30, declared=False)
        for i in range(count)
    )


NODES = [
    cluster_node("a", LABELS_A100, 2),
    cluster_node("b", {**LABELS_A100, "zone": "us"}, 2),
    cluster_node("c", {"zone": "eu"}, 1, nvml_gpus("c", 4)),
    cluster_node("head", {}, 0),
]


@pytest.mark.parametrize(
    ("discovery", "selector", "gpus", "problems"),
    [
        # declared GPUs, every node: the ones whose labels describe them
        ("Declared", "{}", {"a": 2, "b": 2}, ["node c declares 1 GPUs without a usable"]),
        # by the node's own label
        ("Declared", "{zone: eu}", {"a": 2}, ["node c declares 1 GPUs without a usable"]),
        # by mdc's labels from the GPUs
        ("Declared", "{mdc.dev/gpu-memory: 40Gi, zone: us}", {"b": 2}, []),
        ("Declared", "{mdc.dev/node: a}", {"a": 2}, []),
        ("Declared", "{mdc.dev/gpu-count: '2'}", {"a": 2, "b": 2}, []),
        # NVML where it was read; the declared GPUs, with a warning, where it was not
        (
            "NVML",
            "{zone: eu}",
            {"a": 2, "c": 4},
            ["node a: discovery is NVML but no driver; using the 2 GPUs it declares"],
        ),
        # selecting on what NVML saw
        ("NVML", "{mdc.dev/gpu-product: NVIDIA H100 80GB HBM3}", {"c": 4}, []),
        # nothing matches: an empty pool, no problem
        ("Declared", "{zone: mars}", {}, []),
    ],
)
def test_cluster_inventory(
    pool: Callable[[str], GPUPool],
    discovery: str,
    selector: str,
    gpus: dict[str, int],
    problems: list[str],
) -> None:
    gpu_pool = pool(CLUSTER_POOL.format(discovery=discovery, selector=selector))
    assert gpu_pool.nodes == ()
    inventory = cluster_inventory(gpu_pool, NODES)
    counts: dict[str, int] = {}
    for gpu in inventory.gpus:
        counts[gpu.node] = counts.get(gpu.node, 0) + 1
    assert counts == gpus
    assert len(inventory.disagreements) == len(problems), inventory.disagreements
    for problem, expected in zip(inventory.disagreements, problems, strict=True):
        assert problem.startswith(expected), problem
    uuids = [g.uuid for g in inventory.gpus]
    assert len(set(uuids)) == len(uuids)


def test_declared_cluster_gpus_carry_their_labels_and_made_up_uuids(
    pool: Callable[[str], GPUPool],
) -> None:
    inventory = cluster_inventory(
        pool(CLUSTER_POOL.format(discovery="Declared", selector="{mdc.dev/node: a}")), NODES
    )
    assert [(g.product, g.memory, g.declared, g.uuid) for g in inventory.gpus] == [
        ("A100", 40 * 2**30, True, "cluster-a-0"),
        ("A100", 40 * 2**30, True, "cluster-a-1"),
    ]
    assert not any(real_uuid(g.uuid) for g in inventory.gpus)
    assert all(real_uuid(g.uuid) for g in nvml_gpus("c", 2))


def test_a_cluster_pool_without_a_cluster_says_so(pool: Callable[[str], GPUPool]) -> None:
    inventory = cluster_inventory(pool(CLUSTER_POOL.format(discovery="NVML", selector="{}")), None)
    assert inventory.gpus == ()
    assert "--runtime ray" in inventory.disagreements[0]


def test_node_labels_from_the_gpus_win_over_the_nodes_own() -> None:
    node = cluster_node("c", {"mdc.dev/gpu-count": "9", "rack": "r1"}, 1)
    labels = node_labels(node, nvml_gpus("c", 2))
    assert labels == {
        "rack": "r1",
        "mdc.dev/node": "c",
        "mdc.dev/gpu-count": "2",
        "mdc.dev/gpu-product": "NVIDIA H100 80GB HBM3",
        "mdc.dev/gpu-memory": "80Gi",
    }


def test_node_changes_name_joined_and_left_nodes(pool: Callable[[str], GPUPool]) -> None:
    gpu_pool = pool(CLUSTER_POOL.format(discovery="Declared", selector="{}"))
    before = cluster_inventory(gpu_pool, NODES[:2])
    after = cluster_inventory(gpu_pool, [NODES[0], cluster_node("d", LABELS_A100, 4)])
    changes = node_changes(before, after)
    assert [(c.node, c.change, c.gpus) for c in changes] == [("d", "joined", 4), ("b", "left", 2)]
    assert changes[1].describe() == "pool pool-a: node b left (2 GPUs)"
    assert node_changes(after, after) == []
