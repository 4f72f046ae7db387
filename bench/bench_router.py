"""Router overhead: the same backend called directly, through mdc's embedded
router, and through nginx as a reverse proxy with upstream keep-alive -- in
one run -- plus the time from a canary's failure limit to weight 0.

Backend: nginx answering a fixed 200 (so the backend is not the bottleneck).
Latency: ``wrk -c1`` (one kept-alive connection, sequential) p50/p99.
Throughput: ``wrk -c32``. Each figure is the median of a few rounds, the targets
interleaved; also the CPU time the router's loop spends per request (under
``-c32``), the figure least moved by what else runs on the machine. On 2 cores
wrk and the proxy compete for CPU: compare the ratios within this run, never
across runs.

Needs nginx (Debian ``nginx-light``) and wrk. Run:
``.venv/bin/python bench/bench_router.py``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.adapters.router.embedded import EmbeddedRouter
from controller.core.canary import Observation, advance, start
from controller.core.traffic import BackendWindow, RouteConfig
from controller.spec.kinds import Analysis, Check, Metric, RolloutPolicy, Step, StepKind
from tests.gitservers import free_port

#: Rounds of every measurement, and seconds of each run (wrk).
ROUNDS, SECONDS = 3, 3

NGINX = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{backend}; location / {{ return 200 '{{"ok":true}}'; }} }}
  server {{ listen 127.0.0.1:{proxy};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }}
}}
"""


def wrk(url: str, connections: int, seconds: int = 4) -> tuple[float, float, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def micro(label: str) -> float:
        match = re.search(rf"{label}%\s+([0-9.]+)(us|ms|s)", out)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]

    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    return micro(" 50"), micro(" 99"), rps


def thread_time(router: EmbeddedRouter) -> float:
    """CPU seconds the router's loop thread has used."""
    return asyncio.run_coroutine_threadsafe(_thread_time(), router.loop).result()


async def _thread_time() -> float:
    return time.thread_time()


def requests(router: EmbeddedRouter) -> int:
    return sum(s.requests for s in router.snapshot("m").values())


def rollback_time() -> float:
    """Seconds from the tick that reaches the failure limit to weight 0 at the router."""
    policy = RolloutPolicy(
        "p",
        (Step(StepKind.SET_WEIGHT, weight=50), Step(StepKind.ANALYSIS, intervals=5)),
        Analysis(1.0, 0, 10, (Check("errors", Metric.ERROR_RATE, None, 0.01, None, None),)),
        None,
        None,
        None,
        source=None,  # type: ignore[arg-type]
    )
    router = EmbeddedRouter(admin_port=None)
    router.add_model("m")
    router.configure("m", RouteConfig("127.0.0.1:1", "127.0.0.1:2", 50))
    good = BackendWindow(100, 0, 1.0, {0.5: 0.01, 0.9: 0.01, 0.99: 0.01})
    bad = BackendWindow(100, 30, 1.0, {0.5: 0.01, 0.9: 0.01, 0.99: 0.01})
    state, _ = advance(policy, start("h", 0), Observation(True, True, good, good), 0)
    began = time.perf_counter()
    state, actions = advance(policy, state, Observation(True, True, bad, good), 1.0)
    for action in actions:
        if action.kind == "set-weight":
            router.configure("m", RouteConfig("127.0.0.1:1", None, action.weight))
    took = time.perf_counter() - began
    router.close()
    return took


def main() -> None:
    if not (shutil.which("nginx") and shutil.which("wrk")):
        print("needs nginx (nginx-light) and wrk")
        return
    with tempfile.TemporaryDirectory() as tmp:
        backend, proxy = free_port(), free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX.format(dir=tmp, backend=backend, proxy=proxy))
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"])
        router = EmbeddedRouter(admin_port=None)
        try:
            time.sleep(0.5)
            url = router.add_model("m")
            router.configure("m", RouteConfig(f"127.0.0.1:{backend}", f"127.0.0.1:{backend}", 10))
            targets = {
                "direct": f"http://127.0.0.1:{backend}/",
                "nginx proxy": f"http://127.0.0.1:{proxy}/",
                "mdc router": url + "/",
            }
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in targets}
            cpu: list[float] = []
            for _ in range(ROUNDS):  # interleaved, so a busy moment hits every target
                for name, target in targets.items():
                    p50, p99, _ = wrk(target, 1, SECONDS)
                    before = thread_time(router), requests(router)
                    rps = wrk(target, 32, SECONDS)[2]
                    if name == "mdc router":
                        done = requests(router) - before[1]
                        cpu.append((thread_time(router) - before[0]) / max(done, 1))
                    runs[name].append((p50, p99, rps))
        finally:
            router.close()
            nginx.terminate()
            nginx.wait(timeout=10)
    results = {
        name: [statistics.median(r[i] for r in rs) for i in range(3)] for name, rs in runs.items()
    }
    base, ng, mdc = results["direct"], results["nginx proxy"], results["mdc router"]
    print(
        "same backend (nginx return 200), wrk -t1; latency with 1 connection, throughput with "
        f"32; medians of {ROUNDS} interleaved rounds of {SECONDS} s"
    )
    for name, (p50, p99, rps) in results.items():
        print(
            f"  {name:<12} p50 {p50:7.0f} us (+{p50 - base[0]:5.0f})  p99 {p99:7.0f} us "
            f"(+{p99 - base[1]:6.0f})  {rps:8.0f} req/s ({rps / base[2]:.2f} of direct)"
        )
    print(
        f"mdc router / nginx proxy: p50 x{mdc[0] / ng[0]:.2f}, p99 x{mdc[1] / ng[1]:.2f}, "
        f"throughput x{mdc[2] / ng[2]:.2f}; the router's loop: "
        f"{statistics.median(cpu) * 1e6:.0f} us CPU per request"
    )
    print(
        f"failure limit reached -> weight 0 at the router: {rollback_time() * 1e6:.0f} us "
        "(same tick; the next request goes to stable)"
    )


if __name__ == "__main__":
    main()
