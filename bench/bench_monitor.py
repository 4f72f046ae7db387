"""The controller's CPU cost of monitoring 100 models per pass.

What one pass does per model after promotion (as :meth:`Reconciler._watch`
does it): read the router's counters of the stable backend, drain the router's
samples, write them to the feedback files, pull the predictions out of the
answers, and feed the model's monitor (three objectives judged over a rolling
window, drift against a baseline, hourly and daily tallies).

Setup: a real :class:`~controller.adapters.router.embedded.EmbeddedRouter` with 100 models;
each pass every model's counters grow by 200 requests and its sample buffer
gets ``SAMPLES`` redacted samples (what the router's thread keeps from
traffic; that cost is on the router's thread, measured separately below).
The monitor judges every pass (interval 1 s, one pass a simulated second) --
the worst case. CPU time is ``time.process_time`` of the pass.

Baseline, same run: a pass that only reads the 100 models' counters (what a
pass costs without monitoring).

Run: ``.venv/bin/python bench/bench_monitor.py``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.adapters.feedback import FeedbackStore
from controller.adapters.router.embedded import EmbeddedRouter
from controller.core.drift import predictions, redact
from controller.core.monitor import ModelMonitor
from controller.core.traffic import BackendStats, Sample
from controller.spec.kinds import DriftWatch, Monitor, MonitorMetric, Objective, Sampling

MODELS, PASSES, SAMPLES = 100, 60, 20
SPEC = Monitor(
    objectives=(
        Objective("latency", MonitorMetric.LATENCY_P99, None, 0.3),
        Objective("errors", MonitorMetric.ERROR_RATE, None, 0.01),
        Objective("p50", MonitorMetric.LATENCY_P50, None, 0.1),
    ),
    window=300.0,
    interval=1.0,
    drift=DriftWatch("score", 0.2, baseline=20.0, window=30.0, min_samples=200),
    sampling=Sampling(0.1, 8 * 2**20, ("user",)),
)


def request(rng: random.Random) -> dict[str, object]:
    return {
        "user": f"u{rng.randrange(10_000)}",
        "documents": [
            {"id": f"d{i}", "bm25": rng.random(), "freshness": rng.random()} for i in range(4)
        ],
    }


def answer(rng: random.Random) -> list[dict[str, object]]:
    return [{"id": f"d{i}", "score": rng.gauss(0, 1)} for i in range(4)]


def feed(router: EmbeddedRouter, name: str, rng: random.Random, now: float) -> None:
    """What the router's thread did since the last pass: counters and samples."""
    state = router.models[name]
    stats = state.stats["stable"]
    for _ in range(200):
        stats.observe(200 if rng.random() > 0.002 else 500, rng.expovariate(1 / 0.02))
    for _ in range(SAMPLES):
        state.samples.append(
            Sample(now, "stable", 200, 0.02, redact(request(rng), {"user"}), answer(rng), 300)
        )


def run(monitoring: bool) -> dict[str, list[float]]:
    """CPU seconds of each pass: in all, and (monitoring) spent on each part."""
    rng = random.Random(11)
    router = EmbeddedRouter(admin_port=None)
    names = [f"model-{i:03d}" for i in range(MODELS)]
    for name in names:
        router.add_model(name)
    store = FeedbackStore(Path(tempfile.mkdtemp(prefix="mdc-bench-")) / "feedback")
    now = 1_764_309_600.0
    monitors = {
        n: ModelMonitor(n, "1", f"{n}/abc", SPEC, SPEC.objectives, started=now) for n in names
    }
    costs: dict[str, list[float]] = {"pass": [], "feedback": [], "predictions": [], "judge": []}
    clock = time.process_time
    try:
        for _ in range(PASSES):
            now += 1.0
            for name in names:
                feed(router, name, rng, now)
            parts = dict.fromkeys(("feedback", "predictions", "judge"), 0.0)
            began = clock()
            for name in names:
                stats = router.snapshot(name).get("stable") or BackendStats()
                if not monitoring:
                    continue
                samples = router.samples(name)
                t0 = clock()
                store.write(name, "1", f"{name}/abc", samples, 8 * 2**20)
                t1 = clock()
                values = [v for s in samples for v in predictions(s.response, "score")]
                t2 = clock()
                monitors[name].observe(now, stats, gpu_share=0.5, values=values)
                t3 = clock()
                parts["feedback"] += t1 - t0
                parts["predictions"] += t2 - t1
                parts["judge"] += t3 - t2
            costs["pass"].append(clock() - began)
            for key, value in parts.items():
                costs[key].append(value)
    finally:
        router.close()
    return {k: v[5:] for k, v in costs.items()}  # the first passes fill the window


def router_side() -> float:
    """CPU per sampled exchange on the router's thread: decode and redact both bodies."""
    import json  # noqa: PLC0415

    rng = random.Random(5)
    bodies = [
        (json.dumps(request(rng)).encode(), json.dumps(answer(rng)).encode()) for _ in range(2000)
    ]
    began = time.process_time()
    for req, ans in bodies:
        redact(json.loads(req), {"user"})
        redact(json.loads(ans), {"user"})
    return (time.process_time() - began) / len(bodies)


def main() -> None:
    baseline = run(monitoring=False)["pass"]
    monitored = run(monitoring=True)
    print(
        f"{MODELS} models, {PASSES - 5} passes, {SAMPLES} samples per model per pass "
        "(sampled at 0.1: 200 requests a second each), judged every pass"
    )

    def line(label: str, costs: list[float]) -> str:
        p95 = sorted(costs)[int(0.95 * len(costs))]
        return (
            f"  {label:<38} CPU per pass: median {1000 * statistics.median(costs):7.2f} ms, "
            f"p95 {1000 * p95:7.2f} ms"
        )

    print(line("baseline: read the counters only", baseline))
    print(line("monitoring, in all", monitored["pass"]))
    print(line("  of which: write feedback files", monitored["feedback"]))
    print(line("  of which: read predictions", monitored["predictions"]))
    print(line("  of which: objectives, drift, tallies", monitored["judge"]))
    extra = statistics.median(monitored["pass"]) - statistics.median(baseline)
    print(
        f"  monitoring adds {1000 * extra:.1f} ms of CPU per pass, "
        f"{1000 * extra / MODELS:.2f} ms per model"
    )
    print(
        f"  router thread: {1e6 * router_side():.1f} us of CPU per sampled exchange "
        "(decode and redact request and answer)"
    )


if __name__ == "__main__":
    main()
