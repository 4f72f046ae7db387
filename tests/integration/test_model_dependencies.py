"""Per-model dependencies through the packager and the runtime (issue 19, item 3):
two models pinning different versions of one library are built and served side by
side, each answering from its own pin; a second build installs nothing; a model
whose package is neither on the index (unreachable) nor in the wheel directory is
refused saying what is missing. Real uv, real ``bentoml build`` and ``serve``;
nothing reaches the network (hand-written wheels, an unreachable index)."""

from __future__ import annotations

import random
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.adapters.environments import Environments
from controller.adapters.packaging import FetchPolicy, Packager, Source
from controller.adapters.runtime.base import ReleaseSpec, State
from controller.adapters.runtime.local import LocalRuntime
from controller.errors import PermanentError, Reason
from controller.spec.kinds import Model, Probe
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.bentos import bentoml_processes, example_copy
from tests.wheels import write_wheel

pytestmark = pytest.mark.integration

UNREACHABLE = "http://127.0.0.1:9/simple"

SERVICE = """
import bentoml
import mdc_pin_probe


@bentoml.service
class Svc:
    @bentoml.api
    def pin(self) -> dict:
        return {"version": mdc_pin_probe.VERSION, "file": mdc_pin_probe.__file__}
"""


def add_model(repo: Path, name: str, packages: list[str]) -> None:
    module = name.replace("-", "_")
    (repo / "services" / f"{module}.py").write_text(SERVICE)
    (repo / "models" / f"{name}.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: mdc.dev/v1alpha1
            kind: Model
            metadata:
              name: {name}
            spec:
              version: "1"
              team: search
              artifact:
                path: artifacts/search-ranker/v1.json
              service: services/{module}:Svc
              python:
                packages: {packages!r}
              resources:
                cpu: 1
              pool: shared-a100
              rollout: fast
            """
        )
    )


class Counting:
    """subprocess.run, counted."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(command))
        return subprocess.run(command, **kwargs)  # noqa: PLW1510 - check is in kwargs


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, Model]]:
    root = example_copy(tmp_path / "repo")
    add_model(root, "pinned-one", ["mdc-pin-probe==1.0"])
    add_model(root, "pinned-two", ["mdc-pin-probe==2.0"])
    add_model(root, "pinned-missing", ["mdc-pin-absent==1.0"])
    result = load_desired(DirTree(root))
    assert result.ok, result.diagnostics
    return root, dict(result.desired.models)


def test_conflicting_pins_are_served_side_by_side_each_from_its_own_environment(
    tmp_path: Path, repo: tuple[Path, dict[str, Model]]
) -> None:
    root, models = repo
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "mdc-pin-probe", "1.0")
    write_wheel(wheels, "mdc-pin-probe", "2.0")
    counted = Counting()
    environments = Environments(
        tmp_path / "envs",
        index_url=UNREACHABLE,
        find_links=[wheels],
        http_retries=0,
        cache_dir=tmp_path / "uv-cache",
        run=counted,
    )
    home = tmp_path / "home"
    packager = Packager(home, tmp_path / "state", fetch=FetchPolicy(), environments=environments)
    tree = DirTree(root)
    built = {
        name: packager.build(models[name], tree, Source()) for name in ("pinned-one", "pinned-two")
    }
    installs = len(counted.calls)
    assert installs >= 2  # one environment each (a try on the index, then the wheels)
    labels = {
        name: yaml.safe_load(
            (home / "bentos" / r.bento_tag.replace(":", "/") / "bento.yaml").read_text()
        )["labels"]
        for name, r in built.items()
    }
    assert all(Path(labels[name]["mdc.dev/python-site"]).is_dir() for name in built)
    assert labels["pinned-one"]["mdc.dev/python-env"] != labels["pinned-two"]["mdc.dev/python-env"]

    # built again (a restarted controller): the environments are there, nothing installs
    again = {name: packager.build(models[name], tree, Source()) for name in built}
    assert len(counted.calls) == installs
    assert {n: (r.bento_tag, r.built) for n, r in again.items()} == {
        n: (r.bento_tag, False) for n, r in built.items()
    }

    runtime = LocalRuntime(tmp_path / "rt", home, rng=random.Random(0))
    try:
        for name, result in built.items():
            runtime.start(
                ReleaseSpec(
                    f"{name}/stable",
                    name,
                    "1",
                    result.bento_tag,
                    probe=Probe("/pin", {}, 5.0, 0.5, 3),
                    ready_timeout=90,
                )
            )
        answers = {}
        for name in built:
            release = runtime.wait_ready(f"{name}/stable", 90)
            assert release.state is State.READY, release
            answers[name] = httpx.post(f"{release.url}/pin", json={}, timeout=10).json()
        assert answers["pinned-one"]["version"] == "1.0"
        assert answers["pinned-two"]["version"] == "2.0"
        assert str(tmp_path / "envs") in answers["pinned-one"]["file"]
    finally:
        runtime.stop_all(drain=1.0)
        deadline = time.monotonic() + 10
        while bentoml_processes(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert bentoml_processes(tmp_path) == []


def test_a_package_neither_on_the_index_nor_in_the_wheels_is_refused_naming_it(
    tmp_path: Path, repo: tuple[Path, dict[str, Model]]
) -> None:
    root, models = repo
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    environments = Environments(
        tmp_path / "envs",
        index_url="http://user:s3cret@127.0.0.1:9/simple",
        find_links=[wheels],
        http_retries=0,
        cache_dir=tmp_path / "uv-cache",
    )
    packager = Packager(tmp_path / "home", tmp_path / "state", environments=environments)
    with pytest.raises(PermanentError) as caught:
        packager.build(models["pinned-missing"], DirTree(root), Source())
    assert caught.value.reason == Reason.DEPENDENCIES_UNAVAILABLE
    message = str(caught.value)
    assert "mdc-pin-absent==1.0" in message
    assert str(wheels) in message
    assert "127.0.0.1:9" in message
    assert "s3cret" not in message
    assert not (tmp_path / "home" / "bentos" / "pinned-missing").exists()  # nothing built
