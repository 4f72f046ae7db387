"""MLflow as an artifact source (issue 19, item 1), against a real ``mlflow
server`` (sqlite, local artifact root, loopback) with the example repository's
iris-classifier registered by its own training script: a version is resolved,
fetched, imported in ``bentoml.mlflow``'s layout, built and served; an unknown
version is refused naming file, line and field; a registry that goes down is a
transient error, and the next try after it is back succeeds."""

from __future__ import annotations

import random
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
from controller.errors import PermanentError, Reason, TransientError
from controller.spec.kinds import Model, Probe
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
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
