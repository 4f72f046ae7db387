"""How long loading a spec repository takes, next to its floor.

Writes N model specs (plus one pool and one policy) into a temporary
directory, then times, best of several runs:

* baseline: read every file and parse it with PyYAML's C loader (the floor
  DESIGN.md names: about 220 ms for 1,000 files with a git fetch);
* mdc: ``load_desired`` -- safe parse with locations, schema validation,
  semantic rules (service modules parsed, artifacts checked).

Run: ``.venv/bin/python bench/bench_load.py [N]``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from controller.spec.loader import load_desired
from controller.spec.tree import DirTree

ROOT = Path(__file__).resolve().parent.parent


def make_repo(root: Path, count: int) -> None:
    shutil.copytree(ROOT / "tests" / "fixtures" / "specs" / "base", root)
    pool = (root / "pools" / "pool.yaml").read_text()
    (root / "pools" / "pool.yaml").write_text(
        pool.replace("count: 2", "count: 8").replace("limit: 2", f"limit: {count}")
    )
    template = (root / "models" / "model.yaml").read_text()
    for i in range(count):
        text = template.replace("name: model-a", f"name: model-{i:05d}")
        (root / "models" / f"model-{i:05d}.yaml").write_text(text)
    (root / "models" / "model.yaml").unlink()


def best_of(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        make_repo(repo, count)
        files = sorted(repo.rglob("*.yaml"))

        def baseline() -> None:
            for f in files:
                yaml.load(f.read_bytes(), Loader=yaml.CSafeLoader)

        def mdc() -> None:
            result = load_desired(DirTree(repo))
            assert len(result.desired.models) == count, result.diagnostics[:3]

        base_min, base_med = best_of(5, baseline)
        mdc_min, mdc_med = best_of(5, mdc)
    print(f"specs: {count} models + 1 pool + 1 policy")
    for label, low, mid in (
        ("baseline  read + CSafeLoader parse", base_min, base_med),
        ("mdc       load_desired (validated)", mdc_min, mdc_med),
    ):
        print(f"{label} : min {low * 1000:7.1f} ms  median {mid * 1000:7.1f} ms")
    print(f"ratio     mdc / baseline           : {mdc_min / base_min:.2f}x")


if __name__ == "__main__":
    main()
