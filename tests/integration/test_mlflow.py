"""MLflow as an artifact source (issue 19, item 1), against a real ``mlflow
server`` (sqlite, local artifact root, loopback) with the example repository's
iris-classifier registered by its own training script: a version is resolved,
fetched, imported in ``bentoml.mlflow``'s layout, built and served; an unknown
version is refused naming file, line and field; a registry that goes down is a
transient error, and the next try after it is back succeeds."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.adapters.model_registry import MlflowRegistry
from controller.adapters.packaging import FetchPolicy, Packager, Source
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.adapters.runtime.local import LocalRuntime
from controller.app.registry_bridge import RegistryFeedback
from controller.core.status import ModelStatus, Phase, Release
from controller.errors import PermanentError, Reason, TransientError
from controller.spec.kinds import Model, Probe
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from controller.testing import FakeGitHub
from tests.bentos import bentoml_processes, example_copy
from tests.mlflow_server import MlflowServer

pytestmark = pytest.mark.integration

NAME = "iris-classifier"
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MlflowServer, list[dict[str, str]]]]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as running:
        registered = running.register(1, 2, alias="candidate")
        yield running, registered


@pytest.fixture
def registries() -> Iterator[Callable[..., MlflowRegistry]]:
    """Makes registries, and closes them after the test."""
    made: list[MlflowRegistry] = []

    def make(uri: str, **kwargs: Any) -> MlflowRegistry:
        made.append(MlflowRegistry(uri, **kwargs))
        return made[-1]

    yield make
    for registry in made:
        registry.close()


class Counting(httpx.HTTPTransport):
    """A transport that records the paths it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        return super().handle_request(request)


def iris_repo(dest: Path, version: str | int) -> tuple[Path, Model]:
    """The example repository with the iris-classifier at MLflow ``version``."""
    if not dest.exists():
        example_copy(dest)
    (dest / "models" / f"{NAME}.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: mdc.dev/v1alpha1
            kind: Model
            metadata:
              name: {NAME}
            spec:
              version: "{version}"
              team: search
              artifact:
                mlflow:
                  model: {NAME}
                  version: {version}
              service: services/iris_classifier:IrisClassifier
              resources:
                cpu: 1
                memory: 1Gi
              pool: shared-a100
              rollout: fast
            """
        )
    )
    result = load_desired(DirTree(dest))
    assert result.ok, result.diagnostics
    return dest, result.desired.models[NAME]


def labels_of(home: Path, kind: str, tag: str) -> dict[str, str]:
    name, _, version = tag.partition(":")
    info = yaml.safe_load((home / kind / name / version / f"{kind[:-1]}.yaml").read_text())
    return dict(info["labels"])


def test_a_registered_version_is_fetched_imported_built_and_served(
    tmp_path: Path,
    server: tuple[MlflowServer, list[dict[str, str]]],
    registries: Callable[..., MlflowRegistry],
) -> None:
    running, registered = server
    home = tmp_path / "home"
    packager = Packager(
        home, tmp_path / "state", fetch=FetchPolicy(), registry=registries(running.url)
    )
    repo, model = iris_repo(tmp_path / "repo", registered[0]["version"])
    built = packager.build(model, DirTree(repo), Source("repo", "main@sha1:abc"))
    assert built.built
    stored = labels_of(home, "models", built.model_tag)
    assert stored["mdc.dev/mlflow-model"] == NAME
    assert stored["mdc.dev/mlflow-version"] == registered[0]["version"]
    assert stored["mdc.dev/mlflow-run"] == registered[0]["run_id"]
    assert stored["mdc.dev/mlflow-source"].startswith("models:/")
    assert len(stored["mdc.dev/sha256"]) == 64
    # in bentoml.mlflow's layout, so bentoml.mlflow.load_model serves it
    name, _, number = built.model_tag.partition(":")
    info = yaml.safe_load((home / "models" / name / number / "model.yaml").read_text())
    assert info["module"] == "bentoml.mlflow"
    assert (home / "models" / name / number / "mlflow_model" / "MLmodel").is_file()
    # the bento carries where its model came from
    bento = labels_of(home, "bentos", built.bento_tag)
    assert bento["mdc.dev/mlflow-run"] == registered[0]["run_id"]
    assert bento["mdc.dev/mlflow-version"] == registered[0]["version"]

    # the same version again (a restarted controller): a version never changes, so the
    # registry is not even asked, and nothing is built
    counted = Counting()
    again = Packager(
        home,
        tmp_path / "state",
        fetch=FetchPolicy(),
        registry=registries(running.url, transport=counted),
    )
    rebuilt = again.build(model, DirTree(repo), Source("repo", "main@sha1:abc"))
    assert (rebuilt.bento_tag, rebuilt.built) == (built.bento_tag, False)
    assert counted.requests == []

    # version 2 is other bytes: another model tag
    _, model2 = iris_repo(repo, registered[1]["version"])
    second = packager.build(model2, DirTree(repo), Source("repo", "main@sha1:def"))
    assert second.model_tag != built.model_tag
    assert (
        labels_of(home, "models", second.model_tag)["mdc.dev/mlflow-run"] == registered[1]["run_id"]
    )

    runtime = LocalRuntime(tmp_path / "rt", home, rng=random.Random(0))
    try:
        runtime.start(
            ReleaseSpec(
                f"{NAME}/stable",
                NAME,
                "1",
                built.bento_tag,
                probe=Probe("/classify", {"flowers": FLOWERS[:1]}, 5.0, 0.5, 3),
                ready_timeout=120,
            )
        )
        release = runtime.wait_ready(f"{NAME}/stable", 120)
        assert release.state is State.READY, release
        answer = httpx.post(f"{release.url}/classify", json={"flowers": FLOWERS}, timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == f"{NAME}/{registered[0]['version']}"
        assert body["species"][:2] == ["setosa", "virginica"]
        assert set(body["species"]) <= {"setosa", "versicolor", "virginica"}
    finally:
        runtime.stop_all(drain=2.0)
        deadline = time.monotonic() + 10
        while bentoml_processes(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert bentoml_processes(tmp_path) == []


def test_an_unknown_version_is_refused_naming_the_file_line_and_field(
    tmp_path: Path,
    server: tuple[MlflowServer, list[dict[str, str]]],
    registries: Callable[..., MlflowRegistry],
) -> None:
    running, _ = server
    packager = Packager(tmp_path / "home", tmp_path / "state", registry=registries(running.url))
    repo, model = iris_repo(tmp_path / "repo", 97)
    with pytest.raises(PermanentError) as caught:
        packager.build(model, DirTree(repo), Source())
    assert caught.value.reason == Reason.MODEL_VERSION_NOT_FOUND
    line = next(
        n
        for n, text in enumerate((repo / "models" / f"{NAME}.yaml").read_text().splitlines(), 1)
        if text.strip().startswith("version: 97")
    )
    assert str(caught.value).startswith(
        f"models/{NAME}.yaml:{line}: spec.artifact.mlflow.version: MLflow at {running.url} "
        f"has no version 97 of '{NAME}'"
    )
    assert not list((tmp_path / "home" / "models").iterdir())  # nothing half-imported


def test_a_registry_that_goes_down_is_transient_and_the_next_try_succeeds(
    tmp_path: Path,
    server: tuple[MlflowServer, list[dict[str, str]]],
    registries: Callable[..., MlflowRegistry],
) -> None:
    running, registered = server
    registry = registries(f"http://user:pa55word@127.0.0.1:{running.port}")
    packager = Packager(tmp_path / "home", tmp_path / "state", registry=registry)
    repo, model = iris_repo(tmp_path / "repo", registered[1]["version"])
    running.stop()
    try:
        with pytest.raises(TransientError) as caught:
            packager.import_artifact(model, DirTree(repo))
        assert caught.value.reason == Reason.REGISTRY_UNAVAILABLE
        assert "pa55word" not in str(caught.value)
        assert f"127.0.0.1:{running.port}" in str(caught.value)
    finally:
        running.start()
    tag = packager.import_artifact(model, DirTree(repo))
    assert (
        labels_of(tmp_path / "home", "models", tag)["mdc.dev/mlflow-run"] == registered[1]["run_id"]
    )


# -- the bridge: registry -> pull request -> registry --------------------------------------

TOKEN = "ghp_bridge_token"
REPOSITORY = "octo-org/specs"
WATCHED = f"""\
# The iris classifier: the data science team registers it in MLflow.
apiVersion: mdc.dev/v1alpha1
kind: Model
metadata:
  name: {NAME}
spec:
  version: "1"          # MLflow's number
  team: search
  artifact:
    mlflow:
      model: {NAME}
      version: 1        # moved by the bridge's pull requests
  promoteOn:
    alias: candidate
  service: services/iris_classifier:IrisClassifier
  resources:
    cpu: 1
  pool: shared-a100
  rollout: fast
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def watch(repo: Path, github: FakeGitHub, running: MlflowServer) -> dict[str, Any]:
    """``mdc registry watch --once --format json``, as a user runs it."""
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("mdc")),
            "registry",
            "watch",
            "--once",
            "--format",
            "json",
            "--repo",
            str(repo),
            "--github-repository",
            REPOSITORY,
            "--tracking-uri",
            running.url,
        ],
        env={**os.environ, "MDC_GITHUB_TOKEN": TOKEN, "MDC_GITHUB_API_URL": github.url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_the_bridge_opens_one_pull_request_per_version_and_closes_what_it_supersedes(
    tmp_path: Path, server: tuple[MlflowServer, list[dict[str, str]]]
) -> None:
    running, registered = server  # version 2 has the alias candidate
    repo = example_copy(tmp_path / "repo")
    (repo / "models" / f"{NAME}.yaml").write_text(WATCHED)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "seed")
    files = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and ".git" not in p.parts
    }
    with FakeGitHub(REPOSITORY, token=TOKEN) as github:
        github.repo.commit(files)
        first = watch(repo, github, running)["proposals"]
        assert [(p["model"], p["action"], p["version"]) for p in first] == [
            (NAME, "opened", registered[1]["version"])
        ]
        (pull,) = github.repo.pulls.values()
        assert pull.head == f"mdc/registry/{NAME}/v{registered[1]['version']}"
        assert pull.base == "main"
        proposed = github.repo.files(pull.head)[f"models/{NAME}.yaml"].decode()
        version = registered[1]["version"]
        assert proposed == WATCHED.replace('version: "1"', f'version: "{version}"').replace(
            "version: 1 ", f'version: "{version}" '
        )  # both versions moved; comments and layout kept
        body = pull.body or ""
        assert registered[1]["run_id"] in body
        assert "accuracy" in body  # the run's metrics, for the reviewer
        assert "alias 'candidate'" in body

        # looked at again: the same version is never proposed twice
        again = watch(repo, github, running)["proposals"]
        assert [(p["action"], p["pull"]) for p in again] == [("proposed", pull.number)]
        assert len(github.repo.pulls) == 1

        # a newer version gets the alias: its own PR, and the older one is closed
        (newer,) = running.register(2, alias="candidate")
        third = watch(repo, github, running)["proposals"]
        assert [(p["action"], p["version"]) for p in third] == [("opened", newer["version"])]
        assert third[0]["closed"] == [pull.number]
        assert github.repo.pulls[pull.number].state == "closed"
        assert any("Superseded by" in c.body for c in github.repo.comments.get(pull.number, []))
        assert len([p for p in github.repo.pulls.values() if p.state == "open"]) == 1


def test_outcomes_are_written_back_to_the_registry(
    server: tuple[MlflowServer, list[dict[str, str]]],
    registries: Callable[..., MlflowRegistry],
) -> None:
    running, registered = server
    v1, v2 = registered[0]["version"], registered[1]["version"]
    labels = {
        f"{NAME}:b1": {"mdc.dev/mlflow-model": NAME, "mdc.dev/mlflow-version": v1},
        f"{NAME}:b2": {"mdc.dev/mlflow-model": NAME, "mdc.dev/mlflow-version": v2},
    }
    registry = registries(running.url)
    feedback = RegistryFeedback(registry, lambda bento: labels.get(bento, {}), clock=lambda: 1.8e9)
    try:
        stable1 = Release("1", f"{NAME}:b1")
        canary2 = Release("2", f"{NAME}:b2")
        progressing = ModelStatus(NAME, Phase.PROGRESSING, stable=stable1, canary=canary2)
        rolled = ModelStatus(
            NAME,
            Phase.ROLLED_BACK,
            stable=stable1,
            applied_revision="main@sha1:abc",
            canary_state={"reason": "the sequential judge found errorRate worse than stable"},
        )
        feedback.on_status(progressing, rolled)
        assert feedback.flush()
        tags = registry.version(NAME, v2).tags
        assert tags["mdc.status"] == "rolled-back"
        assert "errorRate" in tags["mdc.reason"]
        assert tags["mdc.revision"] == "main@sha1:abc"

        promoted = ModelStatus(
            NAME, Phase.HEALTHY, stable=canary2, applied_revision="main@sha1:def"
        )
        feedback.on_status(progressing, promoted)
        assert feedback.flush()
        assert registry.version(NAME, v2).tags["mdc.status"] == "serving"
        assert registry.version(NAME, v1).tags["mdc.status"] == "retired"
        production = registry.by_alias(NAME, "production")
        assert production is not None
        assert production.version == v2
        assert feedback.fault() is None
    finally:
        feedback.close()
