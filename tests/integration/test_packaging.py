"""Real `bentoml build`: offline, content-addressed, once; a bento holds its own
service's code only; artifacts from the repo and from a URL (sha256-checked); a
broken service fails cleanly."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controller.adapters.packaging import FetchPolicy, Packager, Source, parse_networks
from controller.errors import PermanentError
from controller.spec.identity import planned_bento_tag
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.bentos import example_copy, repo_with_service
from tests.conftest import EXAMPLE_REPO

pytestmark = pytest.mark.integration
MDC = Path(sys.executable).with_name("mdc")


def mdc_build(repo: Path, state: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *prefix,
            str(MDC),
            "build",
            "--repo",
            str(repo),
            "--state-dir",
            str(state),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "BENTOML_HOME"},
    )


def offline_prefix() -> list[str]:
    """Run with no network at all: a fresh network namespace (root), else the
    package index and every proxy pointed at a closed port."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "--net"]
    return [
        "env",
        "PIP_INDEX_URL=http://127.0.0.1:9/",
        "HTTPS_PROXY=http://127.0.0.1:9",
        "HTTP_PROXY=http://127.0.0.1:9",
        "UV_INDEX_URL=http://127.0.0.1:9/",
    ]


def test_build_offline_then_nothing_to_do_then_only_what_changed(tmp_path: Path) -> None:
    repo = example_copy(tmp_path / "repo")
    state = tmp_path / "state"
    first = mdc_build(repo, state, *offline_prefix())
    assert first.returncode == 0, first.stderr
    builds = {b["model"]: b for b in json.loads(first.stdout)["builds"]}
    assert {b["built"] for b in builds.values()} == {True}
    # a plan knows the tag a build will have, without building
    tree = DirTree(repo)
    for name, model in load_desired(tree).desired.models.items():
        assert planned_bento_tag(model, tree) == builds[name]["bento"]
    logs = sorted((state / "logs").glob("build-*.log"))
    assert len(logs) == 2

    again = mdc_build(repo, state, *offline_prefix())
    assert again.returncode == 0, again.stderr
    second = {b["model"]: b for b in json.loads(again.stdout)["builds"]}
    assert {m: b["bento"] for m, b in second.items()} == {m: b["bento"] for m, b in builds.items()}
    assert {b["built"] for b in second.values()} == {False}
    assert sorted((state / "logs").glob("build-*.log")) == logs  # no bentoml build ran

    spec = repo / "models" / "fraud-scorer.yaml"
    spec.write_text(spec.read_text().replace("fraud-scorer/v1.json", "fraud-scorer/v2.json"))
    third = {b["model"]: b for b in json.loads(mdc_build(repo, state).stdout)["builds"]}
    assert third["fraud-scorer"]["built"] is True
    assert third["fraud-scorer"]["modelTag"] != builds["fraud-scorer"]["modelTag"]
    assert third["fraud-scorer"]["bento"] != builds["fraud-scorer"]["bento"]
    assert third["search-ranker"]["built"] is False

    bento = (
        state / "bentoml" / "bentos" / "fraud-scorer" / third["fraud-scorer"]["bento"].split(":")[1]
    )
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["labels"]["mdc.dev/spec"] == "models/fraud-scorer.yaml"
    assert manifest["labels"]["mdc.dev/repo"] == str(repo.resolve())
    assert manifest["services"][0]["models"][0]["tag"] == third["fraud-scorer"]["modelTag"]


def bento_sources(state: Path, tag: str) -> set[str]:
    name, version = tag.split(":")
    src = state / "bentoml" / "bentos" / name / version / "src"
    return {p.relative_to(src).as_posix() for p in src.rglob("*.py")}


def test_a_bento_holds_its_service_and_the_modules_it_imports(tmp_path: Path) -> None:
    """fraud-scorer's service imports a helper beside it, which imports a package at
    the repository's root: both go into its bento (and the build, which imports the
    service, finds them); search-ranker's bento holds its own module only, and a
    change to the helpers rebuilds fraud-scorer alone."""
    repo = example_copy(tmp_path / "repo")
    (repo / "common").mkdir()
    (repo / "common" / "__init__.py").write_text("")
    (repo / "common" / "numbers.py").write_text("def clip(x):\n    return min(1.0, x)\n")
    (repo / "services" / "fraud_features.py").write_text("from common.numbers import clip\n")
    service = repo / "services" / "fraud_scorer.py"
    service.write_text(
        service.read_text().replace(
            "import bentoml\n", "import bentoml\nimport fraud_features  # noqa: F401\n", 1
        )
    )
    state = tmp_path / "state"
    first = mdc_build(repo, state, *offline_prefix())
    assert first.returncode == 0, first.stderr
    builds = {b["model"]: b for b in json.loads(first.stdout)["builds"]}
    assert bento_sources(state, builds["fraud-scorer"]["bento"]) == {
        "fraud_scorer.py",
        "fraud_features.py",
        "common/__init__.py",
        "common/numbers.py",
    }
    assert bento_sources(state, builds["search-ranker"]["bento"]) == {"search_ranker.py"}
    tree = DirTree(repo)
    for name, model in load_desired(tree).desired.models.items():
        assert planned_bento_tag(model, tree) == builds[name]["bento"]

    with (repo / "common" / "numbers.py").open("a") as f:
        f.write("# a comment\n")
    again = mdc_build(repo, state, *offline_prefix())
    assert again.returncode == 0, again.stderr
    second = {b["model"]: b for b in json.loads(again.stdout)["builds"]}
    assert second["fraud-scorer"]["built"] is True
    assert second["fraud-scorer"]["bento"] != builds["fraud-scorer"]["bento"]
    assert second["search-ranker"]["built"] is False
    assert second["search-ranker"]["bento"] == builds["search-ranker"]["bento"]


def test_same_bytes_make_one_model(tmp_path: Path) -> None:
    packager = Packager(tmp_path / "home", tmp_path / "state")
    tree = DirTree(EXAMPLE_REPO)
    model = load_desired(tree).desired.models["fraud-scorer"]
    tag = packager.import_artifact(model, tree)
    digest = hashlib.sha256(
        (EXAMPLE_REPO / "artifacts/fraud-scorer/v1.json").read_bytes()
    ).hexdigest()
    assert tag == f"fraud-scorer:{digest[:20]}"
    assert packager.import_artifact(model, tree) == tag
    assert len(list((tmp_path / "home" / "models" / "fraud-scorer").iterdir())) == 2  # tag + latest
    stored = tmp_path / "home" / "models" / "fraud-scorer" / digest[:20] / "artifact.json"
    assert stored.read_bytes() == (EXAMPLE_REPO / "artifacts/fraud-scorer/v1.json").read_bytes()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A loopback HTTP server for one artifact file."""
    root = tmp_path / "www"
    root.mkdir()
    data = (EXAMPLE_REPO / "artifacts" / "fraud-scorer" / "v2.json").read_bytes()
    (root / "v2.json").write_bytes(data)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2.json", data
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("good", [True, False])
def test_url_artifact_is_checked_before_import(
    tmp_path: Path, served: tuple[str, bytes], good: bool
) -> None:
    url, data = served
    digest = hashlib.sha256(data).hexdigest() if good else "0" * 63 + "1"
    repo = example_copy(tmp_path / "repo")
    spec = repo / "models" / "fraud-scorer.yaml"
    spec.write_text(
        spec.read_text().replace(
            "path: artifacts/fraud-scorer/v1.json", f"url: {url}\n    sha256: '{digest}'"
        )
    )
    tree = DirTree(repo)
    result = load_desired(tree)
    assert result.ok, result.diagnostics
    loopback = FetchPolicy(networks=parse_networks(["127.0.0.0/8"]))  # tests allow it
    packager = Packager(tmp_path / "home", tmp_path / "state", fetch=loopback)
    model = result.desired.models["fraud-scorer"]
    if good:
        tag = packager.import_artifact(model, tree)
        assert tag == f"fraud-scorer:{digest[:20]}"
        assert packager.model_exists(tag)
    else:
        with pytest.raises(PermanentError) as caught:
            packager.import_artifact(model, tree)
        assert caught.value.reason == "ArtifactDigestMismatch"
        assert "nothing was imported" in str(caught.value)
        assert not (tmp_path / "home" / "models" / "fraud-scorer").exists()
        assert list((tmp_path / "state" / "downloads").iterdir()) == []


def test_service_that_fails_to_import_is_a_clear_build_failure(tmp_path: Path) -> None:
    repo, model = repo_with_service(
        tmp_path / "repo",
        "broken",
        """
        import bentoml
        raise RuntimeError("this service is broken on purpose")

        @bentoml.service
        class Svc:
            @bentoml.api
            def ping(self) -> str:
                return "pong"
        """,
    )
    packager = Packager(tmp_path / "home", tmp_path / "state")
    with pytest.raises(PermanentError) as caught:
        packager.build(model, DirTree(repo), Source("r", "c"))
    assert caught.value.reason == "BuildFailed"
    message = caught.value.message
    assert "\n" not in message  # one line, never a traceback
    assert "Traceback" not in message
    assert "RuntimeError: this service is broken on purpose" in message
    log = Path(message.rsplit("log: ", 1)[1])
    assert "Traceback" in log.read_text()  # the whole story stays in the log
    assert not (tmp_path / "home" / "bentos" / "broken").exists() or not any(
        (tmp_path / "home" / "bentos" / "broken").iterdir()
    )
    assert list((tmp_path / "state" / "build").iterdir()) == []  # no build dir left behind


def test_build_with_no_flags_in_a_fresh_copy_of_the_example_repo(tmp_path: Path) -> None:
    """A user's first step: ``mdc build`` where the specs are, with the defaults. The
    default state directory is hidden (``.mdc-state``) and BentoML refuses a build
    context under any hidden directory, so the context must be built elsewhere."""
    repo = example_copy(tmp_path / "repo")
    done = subprocess.run(
        [*offline_prefix(), str(MDC), "build", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=repo,
        env={k: v for k, v in os.environ.items() if k != "BENTOML_HOME"},
    )
    assert done.returncode == 0, done.stderr
    assert "hidden" not in done.stderr
    builds = {b["model"]: b for b in json.loads(done.stdout)["builds"]}
    assert set(builds) == {"fraud-scorer", "search-ranker"}
    assert {b["built"] for b in builds.values()} == {True}
    for build in builds.values():
        name, version = build["bento"].split(":")
        assert (repo / ".mdc-state" / "bentoml" / "bentos" / name / version).is_dir()
