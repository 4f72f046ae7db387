"""GPU placement speed and packing quality, next to a naive first-fit baseline.

Pool: 1,250 nodes x 8 GPUs of 80 GiB = 10,000 GPUs, three teams with quotas
large enough not to bind. Requests: 5,000 mixed -- 40% one whole GPU, 15% two
or four GPUs on one node, 30% a fraction (0.25/0.5), 15% an amount of memory
(10/20/40 GiB); 1 to 3 replicas. Then a churn run: 20,000 operations that
release a random live release or place a new one, after which stranded
capacity (free memory on partly used GPUs, useless to whole-GPU requests) is
measured.

Baseline: first fit by linear scan over all GPUs (what a simple allocator does),
run on the same requests in the same process.

Run: ``.venv/bin/python bench/bench_ledger.py``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.core.allocation import Demand, Placed, Request
from controller.core.inventory import GPU
from controller.core.ledger import Ledger
from controller.spec.kinds import Quota

GiB = 2**30
NODES, PER_NODE, MEMORY = 1250, 8, 80 * GiB


def pool() -> list[GPU]:
    return [
        GPU(f"node-{n:04d}", i, f"GPU-{n:04d}-{i}", "H100", MEMORY, declared=True)
        for n in range(NODES)
        for i in range(PER_NODE)
    ]


def requests(rng: random.Random, count: int, start: int = 0) -> list[Request]:
    out = []
    for i in range(start, start + count):
        roll = rng.random()
        if roll < 0.40:
            demand = Demand(gpus=1)
        elif roll < 0.55:
            demand = Demand(gpus=rng.choice([2, 4]))
        elif roll < 0.85:
            demand = Demand(fraction=rng.choice([0.25, 0.5]))
        else:
            demand = Demand(memory=rng.choice([10, 20, 40]) * GiB)
        team = rng.choice(["fraud", "search", "ads"])
        out.append(Request(f"r{i}", f"m{i}", team, demand, rng.choice([1, 1, 2, 3])))
    return out


class FirstFit:
    """The baseline: linear scan, first GPU(s) that fit, no indexes."""

    def __init__(self, gpus: list[GPU]) -> None:
        self.free = {g.uuid: g.memory for g in gpus}
        self.node = {g.uuid: g.node for g in gpus}
        self.order = [g.uuid for g in gpus]
        self.held: dict[str, list[tuple[str, int]]] = {}

    def place(self, request: Request) -> bool:
        taken: list[tuple[str, int]] = []
        for _ in range(request.replicas):
            d = request.demand
            if d.gpus:
                by_node: dict[str, list[str]] = {}
                choice = None
                for u in self.order:
                    if self.free[u] == MEMORY:
                        by_node.setdefault(self.node[u], []).append(u)
                        if len(by_node[self.node[u]]) == d.gpus:
                            choice = by_node[self.node[u]]
                            break
                if choice is None:
                    break
                for u in choice:
                    taken.append((u, MEMORY))
                    self.free[u] = 0
            else:
                need = d.memory or int(d.fraction * MEMORY)
                u = next((u for u in self.order if self.free[u] >= need), None)
                if u is None:
                    break
                taken.append((u, need))
                self.free[u] -= need
        else:
            self.held[request.release] = taken
            return True
        for u, amount in taken:
            self.free[u] += amount
        return False

    def release(self, name: str) -> None:
        for u, amount in self.held.pop(name, []):
            self.free[u] += amount

    def stranded(self) -> float:
        return sum(f / MEMORY for f in self.free.values() if 0 < f < MEMORY)


def run(allocator: object, reqs: list[Request]) -> tuple[float, list[float], int]:
    times = []
    ok = 0
    start = time.perf_counter()
    for r in reqs:
        t = time.perf_counter()
        result = allocator.place(r)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t)
        ok += isinstance(result, Placed) or result is True
    return time.perf_counter() - start, times, ok


def churn(allocator: object, rng: random.Random, ops: int) -> None:
    live: list[str] = list(
        allocator.held if isinstance(allocator, FirstFit) else allocator.allocations
    )  # type: ignore[attr-defined]
    fresh = iter(requests(rng, ops, start=10**6))
    for _ in range(ops):
        if live and rng.random() < 0.5:
            name = live.pop(rng.randrange(len(live)))
            allocator.release(name)  # type: ignore[attr-defined]
        else:
            r = next(fresh)
            result = allocator.place(r)  # type: ignore[attr-defined]
            if isinstance(result, Placed) or result is True:
                live.append(r.release)


def main() -> None:
    gpus = pool()
    quotas = [Quota(t, 3000, 10_000, p) for t, p in (("fraud", 200), ("search", 100), ("ads", 50))]
    reqs = requests(random.Random(7), 5000)
    p99 = lambda xs: statistics.quantiles(xs, n=100)[98] * 1e6  # noqa: E731

    ledger = Ledger(gpus, quotas)
    total, times, ok = run(ledger, reqs)
    ledger.check()
    baseline = FirstFit(gpus)
    b_total, b_times, b_ok = run(baseline, reqs)

    print(f"pool: {NODES} nodes x {PER_NODE} GPUs = {len(gpus)} GPUs; 5,000 mixed requests")
    for label, spent, samples, count in (
        ("mdc ledger", total, times, ok),
        ("first fit ", b_total, b_times, b_ok),
    ):
        median = statistics.median(samples) * 1e6
        print(
            f"{label} : {len(reqs) / spent:9.0f} placements/s  p50 {median:6.0f} us"
            f"  p99 {p99(samples):6.0f} us  placed {count}"
        )
    print(f"speed ratio: {b_total / total:.1f}x")

    churn(ledger, random.Random(11), 20_000)
    churn(baseline, random.Random(11), 20_000)
    ledger.check()
    stranded, fragmented = ledger.stranded()
    print(
        f"after 20,000 churn operations: mdc stranded {stranded:.1f} GPUs on {fragmented} partly"
        f" used GPUs; first fit stranded {baseline.stranded():.1f} GPUs"
    )


if __name__ == "__main__":
    main()
