"""Packaging and start-up of the example models, next to bare BentoML.

For each example model, in one run:

* cold build: ``Packager.build`` into an empty store (artifact import + bentoml build);
* warm build: the same again (content hash says present: no bentoml build);
* baseline build: a bare ``bentoml build`` of the same service in the same store;
* start to first successful request: ``LocalRuntime`` (start, /readyz, probe, then a
  request) next to a bare ``bentoml serve`` polled with the same request.

Run: ``.venv/bin/python bench/bench_bento.py``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.adapters.packaging import Packager, Source  # noqa: E402
from controller.adapters.runtime.base import ReleaseSpec, State  # noqa: E402
from controller.adapters.runtime.local import LocalRuntime  # noqa: E402
from controller.core.environment import bentoml_env  # noqa: E402
from controller.spec.loader import load_desired  # noqa: E402
from controller.spec.tree import DirTree  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_answer(url: str, path: str, body: dict[str, object], deadline: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        try:
            if httpx.post(url + path, json=body, timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return float("nan")


def main() -> None:
    tree = DirTree(ROOT / "example-repo")
    models = load_desired(tree).desired.models
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        packager = Packager(tmp / "home", tmp / "state")
        runtime = LocalRuntime(tmp / "state", tmp / "home")
        try:
            for name in sorted(models):
                model = models[name]
                t = time.perf_counter()
                result = packager.build(model, tree, Source())
                cold = time.perf_counter() - t
                t = time.perf_counter()
                again = packager.build(model, tree, Source())
                warm = time.perf_counter() - t
                assert result.built
                assert not again.built

                context = tmp / f"ctx-{name}"
                context.mkdir()
                for rel, data in packager.service_files(model, tree).items():
                    (context / rel).write_bytes(data)
                stem = Path(model.service_module).stem
                (context / "bentofile.yaml").write_text(
                    yaml.safe_dump(
                        {
                            "service": f"{stem}:{model.service_class}",
                            "include": ["*.py"],
                            "python": {"lock_packages": False},
                        }
                    )
                )
                t = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "bentoml",
                        "build",
                        str(context),
                        "--version",
                        "bare",
                        "--arg",
                        f"model_tag={result.model_tag}",
                        "-o",
                        "tag",
                    ],
                    env=bentoml_env(tmp / "home"),
                    cwd=context,
                    check=True,
                    capture_output=True,
                )
                bare_build = time.perf_counter() - t

                probe = model.probe
                assert probe is not None
                t = time.perf_counter()
                runtime.start(
                    ReleaseSpec(
                        f"{name}/stable",
                        name,
                        model.version,
                        result.bento_tag,
                        probe=probe,
                        ready_timeout=60,
                    )
                )
                release = runtime.wait_ready(f"{name}/stable", 60, step=0.05)
                assert release.state is State.READY, release.reason
                ours = (
                    time.perf_counter()
                    - t
                    + first_answer(
                        release.url, probe.path, dict(probe.body), time.perf_counter() + 10
                    )
                )
                runtime.stop(f"{name}/stable", drain=5)

                port = free_port()
                bare_home = tmp / "bare-home"
                bare_home.mkdir(exist_ok=True)
                for sub in ("models", "bentos"):
                    if not (bare_home / sub).exists():
                        (bare_home / sub).symlink_to(tmp / "home" / sub)
                t = time.perf_counter()
                with subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bentoml",
                        "serve",
                        result.bento_tag,
                        "--port",
                        str(port),
                        "--host",
                        "127.0.0.1",
                    ],
                    env=bentoml_env(bare_home),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ) as bare:
                    first_answer(
                        f"http://127.0.0.1:{port}",
                        probe.path,
                        dict(probe.body),
                        time.perf_counter() + 60,
                    )
                    bare_start = time.perf_counter() - t
                    bare.terminate()
                    bare.wait(timeout=20)
                print(f"{name}:")
                print(
                    f"  cold build (import + bentoml build) {cold:6.2f} s   "
                    f"bare bentoml build {bare_build:6.2f} s"
                )
                print(f"  warm build (present, skipped)       {warm * 1000:6.1f} ms")
                print(
                    f"  start -> first answer: mdc runtime {ours:5.2f} s   "
                    f"bare bentoml serve {bare_start:5.2f} s"
                )
                shutil.rmtree(context)
        finally:
            runtime.stop_all(drain=5)


if __name__ == "__main__":
    main()
