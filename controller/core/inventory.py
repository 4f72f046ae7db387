"""What GPUs a pool has: discovered through NVML, or declared in the spec.

Owns reading the local GPUs with NVML (``nvidia-ml-py``: index, UUID, product
name, total and used memory, utilisation, MIG mode), expanding the GPUs a
``GPUPool`` declares, and merging the two into an :class:`Inventory` that
always says which GPUs are declared rather than discovered, and reports every
disagreement (a declared GPU NVML does not see, a different product or memory
size, NVML missing on a node that asked for it) instead of trusting either
side silently.

NVML is imported lazily so the rest of mdc runs where it is not installed;
without a driver ``nvmlInit`` raises ``NVMLError_LibraryNotFound``, which
becomes :class:`NVMLUnavailable` (transient: a driver can come back).

A pool may also take its nodes from the runtime's cluster (``spec.cluster``):
the runtime reads each live node (:class:`ClusterNode`: its labels, the GPUs it
declares, and its NVML reading from a task on that node) and
:func:`cluster_inventory` keeps those whose labels -- their own plus
``mdc.dev/node``, ``mdc.dev/gpu-product``, ``mdc.dev/gpu-memory`` and
``mdc.dev/gpu-count`` from their GPUs -- match the pool's ``nodeSelector``.
:func:`node_changes` says which nodes joined and left between two readings.

Called by the reconciler and ``mdc pool``; the GPU ledger
(:mod:`controller.core.ledger`) places releases on :attr:`Inventory.gpus`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from controller.spec.kinds import Discovery, GPUPool
from controller.spec.units import format_bytes, parse_memory

__all__ = [
    "GPU",
    "LABEL_COUNT",
    "LABEL_MEMORY",
    "LABEL_NODE",
    "LABEL_PRODUCT",
    "ClusterNode",
    "Inventory",
    "NodeChange",
    "build_inventory",
    "cluster_inventory",
    "declared_gpus",
    "node_changes",
    "node_labels",
    "real_uuid",
]

LABEL_NODE = "mdc.dev/node"
LABEL_PRODUCT = "mdc.dev/gpu-product"
LABEL_MEMORY = "mdc.dev/gpu-memory"
LABEL_COUNT = "mdc.dev/gpu-count"

#: Declared and discovered memory sizes closer than this count as the same
#: (NVML reports an "80GB" H100 as 79.6 GiB).
MEMORY_TOLERANCE = 0.06


@dataclass(frozen=True)
class GPU:
    node: str
    index: int
    uuid: str
    product: str
    memory: int  # bytes
    declared: bool  # True: written in the spec, never seen by NVML
    memory_used: int | None = None
    utilization: int | None = None  # percent, over NVML's last sample period
    mig: bool | None = None  # MIG mode enabled; None when not supported or unknown

    @property
    def source(self) -> str:
        return "declared" if self.declared else "nvml"


def declared_gpus(pool: GPUPool, node_name: str) -> list[GPU]:
    """The GPUs ``pool`` declares on ``node_name``, with stable made-up UUIDs."""
    node = next(n for n in pool.nodes if n.name == node_name)
    out: list[GPU] = []
    for group in node.gpus:
        for _ in range(group.count):
            index = len(out)
            uuid = f"declared-{pool.name}-{node.name}-{index}"
            out.append(GPU(node.name, index, uuid, group.product, group.memory, declared=True))
    return out


@dataclass(frozen=True)
class Inventory:
    pool: str
    gpus: tuple[GPU, ...]
    disagreements: tuple[str, ...]

    def node_names(self) -> list[str]:
        return sorted({g.node for g in self.gpus})

    @property
    def declared_count(self) -> int:
        return sum(g.declared for g in self.gpus)

    @property
    def discovered_count(self) -> int:
        return sum(not g.declared for g in self.gpus)


def _same_memory(a: int, b: int) -> bool:
    return abs(a - b) <= MEMORY_TOLERANCE * max(a, b)


def _describe(gpus: Sequence[GPU]) -> str:
    if not gpus:
        return "no GPUs"
    counts = Counter((g.product, format_bytes(g.memory)) for g in gpus)
    return ", ".join(
        f"{n} x {product} ({memory})" for (product, memory), n in sorted(counts.items())
    )


def _compare(node: str, declared: list[GPU], found: list[GPU]) -> list[str]:
    """Disagreements between what the spec declares and what NVML sees on a node."""
    problems: list[str] = []
    unmatched = list(found)
    missing: list[GPU] = []
    for gpu in declared:
        match = next(
            (
                f
                for f in unmatched
                if f.product == gpu.product and _same_memory(f.memory, gpu.memory)
            ),
            None,
        )
        if match is None:
            missing.append(gpu)
        else:
            unmatched.remove(match)
    if missing or unmatched:
        problems.append(
            f"node {node}: the spec declares {_describe(declared)} but NVML sees "
            f"{_describe(found)}"
            + (f"; declared but not seen: {_describe(missing)}" if missing else "")
            + (f"; seen but not declared: {_describe(unmatched)}" if unmatched else "")
        )
    return problems


def build_inventory(
    pool: GPUPool, discovered: Mapping[str, Sequence[GPU] | Exception]
) -> Inventory:
    """Merge the pool's declarations with what NVML reported per node.

    ``discovered`` maps a node name to its NVML reading, or to the error that
    reading raised; a node absent from it was not read (no agent there).
    ``Declared`` nodes use their declared GPUs. ``NVML`` nodes use what NVML
    saw (and report any difference from GPUs also declared for them); when
    NVML could not be read they fall back to their declared GPUs, if any, and
    say so.
    """
    gpus: list[GPU] = []
    problems: list[str] = []
    for node in pool.nodes:
        declared = declared_gpus(pool, node.name)
        if node.discovery is Discovery.DECLARED:
            gpus += declared
            continue
        reading = discovered.get(node.name)
        if reading is None or isinstance(reading, Exception):
            why = "NVML was not read there" if reading is None else str(reading)
            fallback = (
                f"using the {len(declared)} declared GPUs" if declared else "no GPUs are usable"
            )
            problems.append(f"node {node.name}: discovery is NVML but {why}; {fallback}")
            gpus += declared
            continue
        found = [g if g.node == node.name else _renamed(g, node.name) for g in reading]
        gpus += found
        if declared:
            problems += _compare(node.name, declared, found)
    return Inventory(pool.name, tuple(gpus), tuple(problems))


def _renamed(gpu: GPU, node: str) -> GPU:
    return replace(gpu, node=node)


# -- pools whose nodes come from the cluster -----------------------------------------


def real_uuid(uuid: str) -> bool:
    """Whether ``uuid`` names a GPU the driver knows (not one mdc made up for a
    declared GPU): only these can go in ``CUDA_VISIBLE_DEVICES``."""
    return uuid.startswith(("GPU-", "MIG-"))


@dataclass(frozen=True)
class ClusterNode:
    """One live node of the runtime's cluster, as the runtime read it."""

    name: str  # its pool node name
    labels: Mapping[str, str]  # the labels it was started with
    gpus: int  # the GPUs it declares to the cluster
    nvml: tuple[GPU, ...] | str = "NVML was not read there"  # the reading, or why none


def _declared(node: ClusterNode) -> tuple[list[GPU], str | None]:
    """The GPUs ``node`` declares, described by its labels; a problem when it declares
    GPUs whose product or memory its labels do not give (they cannot be booked)."""
    if node.gpus <= 0:
        return [], None
    product = node.labels.get(LABEL_PRODUCT)
    memory_label = node.labels.get(LABEL_MEMORY)
    memory = None
    if memory_label:
        with contextlib.suppress(ValueError):
            memory = parse_memory(memory_label)
    if not product or not memory:
        missing = " and ".join(
            label
            for label, ok in ((LABEL_PRODUCT, bool(product)), (LABEL_MEMORY, bool(memory)))
            if not ok
        )
        return [], (
            f"node {node.name} declares {node.gpus} GPUs without a usable {missing} label: "
            "they are left out of the pool"
        )
    return [
        GPU(node.name, i, f"cluster-{node.name}-{i}", product, memory, declared=True)
        for i in range(node.gpus)
    ], None


def node_labels(node: ClusterNode, gpus: Sequence[GPU]) -> dict[str, str]:
    """The labels a pool's ``nodeSelector`` is matched against: the node's own, then
    mdc's from its GPUs (which win: they say what the GPUs are)."""
    labels = dict(node.labels)
    labels[LABEL_NODE] = node.name
    labels[LABEL_COUNT] = str(len(gpus))
    if gpus:
        labels[LABEL_PRODUCT] = ",".join(sorted({g.product for g in gpus}))
        labels[LABEL_MEMORY] = format_bytes(min(g.memory for g in gpus))
    return labels


def cluster_inventory(pool: GPUPool, nodes: Sequence[ClusterNode] | None) -> Inventory:
    """The inventory of a pool whose nodes come from the cluster (``spec.cluster``):
    the GPUs of every node in ``nodes`` whose labels match the selector. ``nodes``
    is None when the runtime has no cluster (the local runtime)."""
    assert pool.cluster is not None
    if nodes is None:
        return Inventory(
            pool.name,
            (),
            (
                f"pool {pool.name} takes its nodes from the cluster, but the runtime has "
                "none (run mdc with --runtime ray)",
            ),
        )
    gpus: list[GPU] = []
    problems: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):
        declared, problem = _declared(node)
        found = declared
        if pool.cluster.discovery is Discovery.NVML:
            if isinstance(node.nvml, tuple) and node.nvml:
                found = [_renamed(g, node.name) for g in node.nvml]
                problem = None
            else:
                why = node.nvml if isinstance(node.nvml, str) else "NVML sees no GPUs"
                problem = f"node {node.name}: discovery is NVML but {why}; " + (
                    f"using the {len(declared)} GPUs it declares"
                    if declared
                    else (problem or "it has no usable GPUs")
                )
        if not pool.cluster.selects(node_labels(node, found)):
            continue
        if problem:
            problems.append(problem)
        gpus += found
    return Inventory(pool.name, tuple(gpus), tuple(problems))


@dataclass(frozen=True)
class NodeChange:
    """A node that joined or left a pool between two inventories."""

    pool: str
    node: str
    change: str  # "joined" or "left"
    gpus: int

    def describe(self) -> str:
        return f"pool {self.pool}: node {self.node} {self.change} ({self.gpus} GPUs)"


def node_changes(before: Inventory, after: Inventory) -> list[NodeChange]:
    """The nodes of ``after`` that ``before`` did not have, and the reverse."""
    old = Counter(g.node for g in before.gpus)
    new = Counter(g.node for g in after.gpus)
    joined = [NodeChange(after.pool, n, "joined", new[n]) for n in sorted(set(new) - set(old))]
    left = [NodeChange(after.pool, n, "left", old[n]) for n in sorted(set(old) - set(new))]
    return joined + left
