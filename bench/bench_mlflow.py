"""A scikit-learn model from MLflow to its first answer, next to bare BentoML.

Setup: a real ``mlflow server`` (sqlite, local artifact root, loopback) and the
example repository's ``iris-classifier`` trained and registered by its own
script (``example-repo/artifacts/iris-classifier/train.py``, version 1).

* mdc, cold: ``Packager.build`` of a spec naming ``artifact.mlflow`` version 1
  into an empty store (fetch through the REST API + import in ``bentoml.mlflow``'s
  layout, then ``bentoml build``), then ``LocalRuntime`` start to the first
  successful request;
* mdc, warm: a new packager on the same state (a restarted controller: the
  version is not fetched again, the bento is present), then start to first answer;
* baseline, bare BentoML: ``bentoml.mlflow.import_model(NAME, "models:/NAME/1")``
  (MLflow's client downloads it), ``bentoml build`` of the same service, and a
  bare ``bentoml serve`` polled with the same request.

Run: ``.venv/bin/python bench/bench_mlflow.py``. Prints figures; asserts
nothing. Needs the dev extras (mlflow, scikit-learn); no network but loopback.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.adapters.model_registry import MlflowRegistry  # noqa: E402
from controller.adapters.packaging import Packager, Source  # noqa: E402
from controller.adapters.runtime.base import ReleaseSpec, State  # noqa: E402
from controller.adapters.runtime.local import LocalRuntime  # noqa: E402
from controller.core.environment import bentoml_env  # noqa: E402
from controller.spec.loader import load_desired  # noqa: E402
from controller.spec.tree import DirTree  # noqa: E402
from tests.mlflow_server import MlflowServer, free_port  # noqa: E402

NAME = "iris-classifier"
BODY = {"flowers": [[5.1, 3.5, 1.4, 0.2]]}
SPEC = f"""\
apiVersion: mdc.dev/v1alpha1
kind: Model
metadata:
  name: {NAME}
spec:
  version: "1"
  team: search
  artifact:
    mlflow: {{model: {NAME}, version: 1}}
  service: services/iris_classifier:IrisClassifier
  resources: {{cpu: 1}}
  pool: shared-a100
  rollout: fast
"""


def first_answer(url: str, deadline: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        try:
            if httpx.post(url + "/classify", json=BODY, timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return float("nan")


def mdc_run(tmp: Path, repo: Path, server: MlflowServer, label: str) -> list[tuple[str, float]]:
    """Build (as a controller does) and start to the first answer."""
    tree = DirTree(repo)
    model = load_desired(tree).desired.models[NAME]
    registry = MlflowRegistry(server.url)
    packager = Packager(tmp / "home", tmp / "state", registry=registry)
    rows = []
    t = time.perf_counter()
    model_tag = packager.import_artifact(model, tree)
    rows.append((f"{label}: fetch + import", time.perf_counter() - t))
    t = time.perf_counter()
    built = packager.build(model, tree, Source())
    what = "built" if built.built else "present"
    rows.append((f"{label}: bento ({what})", time.perf_counter() - t))
    assert built.model_tag == model_tag
    runtime = LocalRuntime(tmp / "state", tmp / "home", rng=random.Random(0))
    try:
        t = time.perf_counter()
        runtime.start(ReleaseSpec(f"{NAME}/stable", NAME, "1", built.bento_tag, ready_timeout=120))
        release = runtime.wait_ready(f"{NAME}/stable", 120)
        if release.state is not State.READY:
            raise SystemExit(f"{label}: not ready: {release}")
        answered = first_answer(release.url, time.perf_counter() + 30)
        took = time.perf_counter() - t if not math.isnan(answered) else answered
        rows.append((f"{label}: start to first answer", took))
    finally:
        runtime.stop_all(drain=1.0)
        registry.close()
    return rows


def bare(tmp: Path, repo: Path, server: MlflowServer) -> list[tuple[str, float]]:
    """The same model with BentoML alone."""
    home = tmp / "bare-home"
    env = bentoml_env(home, {"MLFLOW_TRACKING_URI": server.url})
    rows = []
    t = time.perf_counter()
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""\
                import bentoml
                print(bentoml.mlflow.import_model({NAME!r}, "models:/{NAME}/1").tag)
                """
            ),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    tag = imported.stdout.strip().splitlines()[-1]
    rows.append(("bare: bentoml.mlflow.import_model", time.perf_counter() - t))
    context = tmp / "bare-context"
    (context / "services").mkdir(parents=True)
    shutil.copy(repo / "services" / "iris_classifier.py", context / "iris_classifier.py")
    (context / "bentofile.yaml").write_text(
        'service: "iris_classifier:IrisClassifier"\ninclude: ["*.py"]\n'
        "python: {lock_packages: false}\n"
    )
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bentoml",
            "build",
            str(context),
            "--arg",
            f"model_tag={tag}",
            "-o",
            "tag",
        ],
        env=env,
        cwd=context,
        capture_output=True,
        text=True,
        check=True,
    )
    rows.append(("bare: bentoml build", time.perf_counter() - t))
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            str(context),
            "--port",
            str(port),
            "--arg",
            f"model_tag={tag}",
        ],
        env=env,
        cwd=context,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        waited = first_answer(f"http://127.0.0.1:{port}", time.perf_counter() + 120)
        took = time.perf_counter() - t if not math.isnan(waited) else waited
        rows.append(("bare: bentoml serve to first answer", took))
    finally:
        proc.terminate()
        proc.wait(20)
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        shutil.copytree(ROOT / "example-repo", repo)
        (repo / "models" / f"{NAME}.yaml").write_text(SPEC)
        with MlflowServer(tmp / "mlflow") as server:
            t = time.perf_counter()
            server.register(1)
            registered = time.perf_counter() - t
            rows = [("(setup) train + register with MLflow's client", registered)]
            rows += mdc_run(tmp, repo, server, "mdc cold")
            rows += mdc_run(tmp, repo, server, "mdc warm")
            rows += bare(tmp, repo, server)
    print(f"{'step':<48} {'seconds':>8}")
    for label, seconds in rows:
        print(f"{label:<48} {seconds:8.2f}")
    cold = sum(s for label, s in rows if label.startswith("mdc cold"))
    warm = sum(s for label, s in rows if label.startswith("mdc warm"))
    baseline = sum(s for label, s in rows if label.startswith("bare"))
    totals = f"{cold:.2f} / {warm:.2f} / {baseline:.2f}"
    print(f"{'total: mdc cold / mdc warm / bare BentoML':<48} {totals}")


if __name__ == "__main__":
    main()
