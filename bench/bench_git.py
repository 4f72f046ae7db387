"""Cost of a poll of a spec repository with 1,000 model specs, over a real
``git daemon`` on loopback, next to the bare pygit2 fetch it stands on.

Prints, best and median of several runs:

* baseline: a bare pygit2 fetch of the branch (no-op: nothing new);
* cold pass: a new mirror, fetch everything, load and validate every spec;
* no-op poll: fetch + tree-id compare (the snapshot loader returns the last
  result without reading a file);
* one file changed: a new commit touching one model; fetch + load, where only
  the changed file is parsed and schema-checked again.

Run: ``.venv/bin/python bench/bench_git.py [N]``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_load import make_repo  # noqa: E402
from controller.adapters.git.source import GitSource  # noqa: E402
from controller.spec.loader import SnapshotLoader  # noqa: E402
from tests.gitservers import GitDaemon, make_bare_repo, run_git  # noqa: E402


def timed(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000, statistics.median(times) * 1000


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        served = tmp / "served"
        served.mkdir()
        make_bare_repo(served, "specs")
        work = tmp / "work"
        make_repo(work, count)
        run_git("init", "-q", "-b", "main", cwd=work)
        run_git("add", "-A", cwd=work)
        run_git("commit", "-qm", "specs", cwd=work)
        with GitDaemon(served) as daemon:
            url = daemon.url("specs")
            run_git("push", "-q", url, "main", cwd=work)

            states = iter(range(10_000))

            def cold() -> None:
                source = GitSource(url, "main", tmp / f"cold-{next(states)}")
                snap = source.fetch()
                result = SnapshotLoader().load(source.tree(snap), snap.tree)
                assert len(result.desired.models) == count

            source = GitSource(url, "main", tmp / "warm")
            loader = SnapshotLoader()
            snap = source.fetch()
            loader.load(source.tree(snap), snap.tree)

            def bare_fetch() -> None:
                source.remote_handle().fetch(["+refs/heads/main:refs/remotes/origin/main"])

            def noop() -> None:
                s = source.fetch()
                loader.load(source.tree(s), s.tree)

            edits = iter(range(10_000))

            def one_changed() -> None:
                # outside the timing: commit and push a change to one model
                i = next(edits)
                path = work / "models" / "model-00007.yaml"
                path.write_text(path.read_text().replace('version: "', f'version: "{i}.'))
                run_git("commit", "-qam", f"edit {i}", cwd=work)
                run_git("push", "-q", url, "main", cwd=work)
                start = time.perf_counter()
                s = source.fetch()
                result = loader.load(source.tree(s), s.tree)
                elapsed.append(time.perf_counter() - start)
                assert result.desired.models["model-00007"].version.startswith(f"{i}.")

            base = timed(20, bare_fetch)
            cold_t = timed(3, cold)
            noop_t = timed(20, noop)
            elapsed: list[float] = []
            for _ in range(5):
                one_changed()
            one = (min(elapsed) * 1000, statistics.median(elapsed) * 1000)

    print(f"specs: {count} models + 1 pool + 1 policy, served by git daemon on loopback")
    for label, (low, mid) in (
        ("baseline  bare pygit2 fetch (no-op)", base),
        ("cold      new mirror: fetch + load ", cold_t),
        ("no-op     fetch + tree-id compare  ", noop_t),
        ("changed   fetch + load, 1 file new ", one),
    ):
        print(
            f"{label} : min {low:8.1f} ms  median {mid:8.1f} ms  ({low / base[0]:6.1f}x baseline)"
        )


if __name__ == "__main__":
    main()
