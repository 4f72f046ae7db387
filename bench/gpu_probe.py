"""On a machine with NVIDIA GPUs: NVML discovery, and what a placement's
environment does to a real CUDA process.

Prints: how long ``read_nvml`` takes (20 reads), the discovered GPUs, the
inventory merged with a pool that declares a different GPU (the disagreement
it reports), and for two releases sharing one GPU by fraction: the
``launch_env`` each gets, and what a child PyTorch process sees under it --
one device (by UUID), the memory bound honoured with
``torch.cuda.set_per_process_memory_fraction``, and an allocation over the
bound refused. A bogus UUID shows no device at all.

Run on the GPU machine: ``PYTHONPATH=. python3 bench/gpu_probe.py``. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.adapters.nvml import read_nvml
from controller.core.allocation import Demand, Placed, Request, launch_env
from controller.core.inventory import build_inventory
from controller.core.ledger import Ledger
from controller.spec.kinds import Discovery, GPUGroup, GPUPool, Node, Quota, Sharing

CHILD = r"""
import json, os, torch
out = {"count": torch.cuda.device_count()}
if out["count"]:
    props = torch.cuda.get_device_properties(0)
    out["name"] = props.name
    out["uuid"] = "GPU-" + str(props.uuid)
    limit = int(os.environ.get("MDC_GPU_MEMORY_LIMIT_BYTES", "0"))
    if limit:
        torch.cuda.set_per_process_memory_fraction(limit / props.total_memory, 0)
        small = torch.empty(limit // 2, dtype=torch.uint8, device="cuda")
        out["within_bound"] = "ok"
        try:
            torch.empty(limit + (1 << 30), dtype=torch.uint8, device="cuda")
            out["over_bound"] = "allowed"
        except torch.OutOfMemoryError:
            out["over_bound"] = "refused"
print(json.dumps(out))
"""


def child(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    times = []
    for _ in range(20):
        start = time.perf_counter()
        gpus = read_nvml("gpu-node")
        times.append(time.perf_counter() - start)
    print(
        f"read_nvml: {len(gpus)} GPU(s); min {min(times) * 1000:.1f} ms, "
        f"median {statistics.median(times) * 1000:.1f} ms over 20 reads"
    )
    for g in gpus:
        print(
            f"  {g.index} {g.uuid} {g.product} {g.memory / 2**30:.1f} GiB total, "
            f"{(g.memory_used or 0) / 2**30:.1f} GiB used, util {g.utilization}%, mig {g.mig}"
        )

    pool = GPUPool(
        "probe",
        Sharing.FRACTIONAL,
        (Node("gpu-node", Discovery.NVML, (GPUGroup("NVIDIA A100-SXM4-80GB", 80 * 2**30, 1),)),),
        (Quota("t", 1, 1, 100),),
        source=None,  # type: ignore[arg-type]
    )
    inventory = build_inventory(pool, {"gpu-node": gpus})
    print(
        f"inventory: {inventory.discovered_count} discovered, {inventory.declared_count} declared"
    )
    for text in inventory.disagreements:
        print(f"  disagreement: {text}")

    ledger = Ledger(inventory.gpus, [Quota("t", 1, 1, 100)])
    for name in ("a", "b"):
        decision = ledger.place(Request(name, name, "t", Demand(fraction=0.5)))
        assert isinstance(decision, Placed), decision
        env = launch_env(decision.allocation.replicas[0])
        print(f"release {name}: {env}")
        print(f"  child sees: {child(env)}")
    print(f"stranded after two halves: {ledger.stranded()}")
    print(
        f"bogus UUID: {child({'CUDA_VISIBLE_DEVICES': 'GPU-00000000-0000-0000-0000-000000000000'})}"
    )


if __name__ == "__main__":
    main()
