"""Per-model dependencies, isolated: each requirement set is installed once, with the
real uv, into its own environment, and a process given that environment imports its
own pin of a library. Nothing reaches the network: the wheels are written here, into
a wheel directory, and the index is an unreachable loopback URL."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.environments import (
    Environments,
    RequirementError,
    environment_digest,
    normalize,
    public_url,
)
from controller.errors import PermanentError
from tests.wheels import write_wheel

pytestmark = pytest.mark.integration

#: Nothing listens on the discard port: connections are refused at once.
UNREACHABLE = "http://127.0.0.1:9/simple"


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheels")
    write_wheel(directory, "mdc-pin-probe", "1.0")
    write_wheel(directory, "mdc-pin-probe", "2.0")
    write_wheel(directory, "mdc-pin-probe", "3.0", requires=("mdc-pin-dep>=1",))
    return directory


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[str]:
    """A reachable package index (PEP 503 pages over the wheels) on loopback."""
    root = tmp_path_factory.mktemp("index")
    project = root / "simple" / "mdc-pin-probe"
    project.mkdir(parents=True)
    links = "".join(
        f'<a href="/files/{w.name}">{w.name}</a>\n' for w in sorted(wheels.glob("*.whl"))
    )
    (project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
    (root / "files").symlink_to(wheels)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Counting:
    """subprocess.run, counted."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        with self.lock:
            self.calls.append(list(command))
        return subprocess.run(command, **kwargs)  # noqa: PLW1510 - check is in kwargs


Factory = Callable[..., Environments]


@pytest.fixture
def make(tmp_path: Path, wheels: Path) -> Factory:
    def factory(**overrides: Any) -> Environments:
        options: dict[str, Any] = {
            "index_url": UNREACHABLE,
            "find_links": (wheels,),
            "cache_dir": tmp_path / "uv-cache",
            "http_retries": 0,
            "timeout": 120.0,
        }
        options.update(overrides)
        return Environments(tmp_path / "envs", **options)

    return factory


def probe_version(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import mdc_pin_probe; print(mdc_pin_probe.VERSION)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


# -- one environment per requirement set ------------------------------------------


def test_two_pins_of_one_library_each_import_their_own(make: Factory) -> None:
    environments = make()
    one, installed_one = environments.ensure(["mdc-pin-probe==1.0"])
    two, installed_two = environments.ensure(["mdc_pin_probe == 2.0"])

    assert installed_one
    assert installed_two
    assert one.digest != two.digest
    assert one.installed == ("mdc-pin-probe==1.0",)
    assert two.installed == ("mdc-pin-probe==2.0",)
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": "/nowhere"}
    assert probe_version(one.env(base)) == "1.0"
    assert probe_version(two.env(base)) == "2.0"
    assert one.env(base)["PYTHONPATH"] == f"{one.site}{os.pathsep}/nowhere"
    assert two.env({})["PYTHONPATH"] == str(two.site)
    # the controller's own environment does not see either
    with pytest.raises(subprocess.CalledProcessError):
        probe_version({"PATH": base["PATH"]})
    # what is left under the root: the environments, their logs and locks
    names = sorted(p.name for p in environments.root.iterdir())
    assert names == sorted([one.digest, two.digest, "locks", "logs"])
    assert not (one.site / ".lock").exists()
    log = environments.log_path(one.digest).read_text()
    assert "trying local wheels only" in log


def test_an_unchanged_environment_is_never_rebuilt(make: Factory) -> None:
    first = make()
    built, installed = first.ensure(["mdc-pin-probe==1.0", "# pinned for the demo", ""])
    assert installed
    marker = built.path / "environment.json"
    before = (marker.read_bytes(), marker.stat().st_mtime_ns, built.site.stat().st_mtime_ns)

    counting = Counting()
    again = make(run=counting)  # another controller, same root
    found, installed = again.ensure(["mdc-pin-probe == 1.0", "mdc-pin-probe==1.0"])

    assert not installed
    assert counting.calls == []
    assert found == built
    assert again.get(["MDC_Pin_Probe==1.0"]) == built
    assert (marker.read_bytes(), marker.stat().st_mtime_ns, built.site.stat().st_mtime_ns) == before


def test_get_sees_nothing_before_ensure_and_for_no_requirements(make: Factory) -> None:
    environments = make()
    assert environments.get(["mdc-pin-probe==2.0"]) is None
    assert environments.get(["", "# nothing"]) is None
    with pytest.raises(ValueError, match="empty"):
        environments.ensure([])


def test_an_incomplete_environment_is_replaced(make: Factory) -> None:
    environments = make()
    digest = environments.digest(["mdc-pin-probe==2.0"])
    leftover = environments.root / digest / "site"
    leftover.mkdir(parents=True)  # a crash before the marker (an older layout)
    (leftover / "junk.py").write_text("")
    dead = environments.root / f".{digest}.killed"  # an install killed mid-way
    (dead / "site").mkdir(parents=True)

    built, installed = environments.ensure(["mdc-pin-probe==2.0"])

    assert installed
    assert not (built.site / "junk.py").exists()
    assert not dead.exists()
    assert probe_version(built.env({})) == "2.0"


def test_two_threads_ensuring_one_set_install_it_once(make: Factory) -> None:
    counting = Counting()
    results: list[tuple[object, bool]] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            results.append(make(run=counting).ensure(["mdc-pin-probe==1.0"]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ensure) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert sorted(flag for _, flag in results) == [False, False, True]
    assert len({id(env) for env, _ in results}) == 3
    assert len({env for env, _ in results}) == 1  # equal values
    # one install: the index attempt and the local-wheels attempt of one thread
    assert len(counting.calls) == 2


def test_offline_installs_from_the_wheel_directory_alone(make: Factory) -> None:
    counting = Counting()
    environments = make(offline=True, index_url=None, run=counting)
    built, installed = environments.ensure(["mdc-pin-probe>=1.5"])
    assert installed
    assert built.installed == ("mdc-pin-probe==2.0",)
    assert len(counting.calls) == 1
    assert "--offline" in counting.calls[0]


# -- when it cannot be installed ------------------------------------------------


def test_a_missing_wheel_with_the_index_unreachable_names_what_and_where(
    make: Factory, wheels: Path
) -> None:
    environments = make(index_url="http://mdc-bot:hunter2@127.0.0.1:9/simple")
    with pytest.raises(PermanentError) as caught:
        environments.ensure(["scikit-learn==1.5.2", "mdc-pin-probe==1.0"])

    error = caught.value
    assert error.reason == "DependenciesUnavailable"
    message = str(error)
    assert message.startswith("cannot install scikit-learn==1.5.2:")
    assert "http://127.0.0.1:9/simple cannot be reached" in message
    assert str(wheels) in message
    assert "put its wheels (and its dependencies') there" in message
    digest = environments.digest(["scikit-learn==1.5.2", "mdc-pin-probe==1.0"])
    log = environments.log_path(digest).read_text()
    for text in (message, log):
        assert "hunter2" not in text
        assert "mdc-bot" not in text
    assert "scikit-learn" in log
    # nothing half-built is left behind
    assert sorted(p.name for p in environments.root.iterdir()) == ["locks", "logs"]


def test_a_missing_dependency_is_named_as_one(make: Factory) -> None:
    with pytest.raises(PermanentError) as caught:
        make().ensure(["mdc-pin-probe==3.0"])
    assert caught.value.reason == "DependenciesUnavailable"
    assert "no wheel for its dependency mdc-pin-dep is in" in str(caught.value)
    assert str(caught.value).startswith("cannot install mdc-pin-probe==3.0:")


def test_offline_without_wheel_directories_says_how_to_provide_them(make: Factory) -> None:
    with pytest.raises(PermanentError) as caught:
        make(offline=True, find_links=()).ensure(["mdc-pin-probe==1.0"])
    assert caught.value.reason == "DependenciesUnavailable"
    message = str(caught.value)
    assert "the controller runs offline" in message
    assert "no wheel directory (find-links) is configured" in message


def test_the_index_serves_when_it_can_be_reached(make: Factory, index: str) -> None:
    counting = Counting()
    built, installed = make(index_url=index, find_links=(), run=counting).ensure(
        ["mdc-pin-probe<3"]
    )
    assert installed
    assert built.installed == ("mdc-pin-probe==2.0",)
    assert len(counting.calls) == 1  # no fallback to local wheels
    assert index not in " ".join(counting.calls[0])  # the index travels in uv's environment


@pytest.mark.parametrize(
    ("requirements", "quoted"),
    [
        (["mdc-pin-probe>=1.5,<2"], "only the following versions of mdc-pin-probe"),
        (["mdc-pin-probe>=9"], "mdc-pin-probe>=9"),
        (["no-such-project-mdc==1.0"], "no-such-project-mdc"),
    ],
)
def test_no_version_that_satisfies_is_a_resolution_failure(
    make: Factory, index: str, requirements: list[str], quoted: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        make(index_url=index, find_links=()).ensure(requirements)
    assert caught.value.reason == "DependenciesFailed"
    message = str(caught.value)
    assert message.startswith(f"cannot install {normalize(requirements)[0]}:")
    assert quoted in message
    assert "\n" not in message


def test_no_index_uses_the_wheel_directory_alone(make: Factory) -> None:
    counting = Counting()
    with pytest.raises(PermanentError) as caught:
        make(no_index=True, run=counting).ensure(["mdc-pin-probe>=1.5,<2"])
    assert caught.value.reason == "DependenciesUnavailable"
    assert "the controller uses no package index" in str(caught.value)
    assert len(counting.calls) == 1
    assert "--no-index" in counting.calls[0]


def test_uv_missing_is_a_clear_permanent_error(make: Factory) -> None:
    with pytest.raises(PermanentError, match=r"uv .*cannot be run") as caught:
        make(uv="/nonexistent/uv").ensure(["mdc-pin-probe==1.0"])
    assert caught.value.reason == "DependenciesFailed"


def test_a_bad_requirement_is_refused_before_uv_runs(make: Factory) -> None:
    counting = Counting()
    with pytest.raises(PermanentError, match="options are not allowed"):
        make(run=counting).ensure(["mdc-pin-probe==1.0", "--index-url http://evil/simple"])
    assert counting.calls == []


# -- normalize and the digest, as tables ------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], ()),
        (["", "  ", "# a comment"], ()),
        (["scikit-learn==1.5.2"], ("scikit-learn==1.5.2",)),
        (["  Scikit_Learn == 1.5.2  "], ("scikit-learn==1.5.2",)),
        (["numpy>=1.26", "numpy>=1.26", "pandas"], ("numpy>=1.26", "pandas")),
        (["pandas", "numpy<2,>=1.26"], ("numpy<2,>=1.26", "pandas")),
        (["requests[SOCKS,security]>=2"], ("requests[security,socks]>=2",)),
        (["torch==2.4 # the GPU build"], ("torch==2.4",)),
        (["numpy\npandas\n# comment"], ("numpy", "pandas")),
        (['uvloop; sys_platform != "win32"'], ('uvloop; sys_platform != "win32"',)),
    ],
)
def test_normalize(given: list[str], expected: tuple[str, ...]) -> None:
    assert normalize(given) == expected


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("-e .", "options are not allowed"),
        ("--index-url x", "options are not allowed"),
        ("-r other.txt", "options are not allowed"),
        ("--find-links /wheels", "options are not allowed"),
        ("foo @ https://x/y.whl", "a URL or path reference"),
        ("foo @ file:///wheels/foo.whl", "a URL or path reference"),
        ("not a req!!", "not a PEP 508 requirement"),
        ("./wheels/foo-1.0-py3-none-any.whl", "not a PEP 508 requirement"),
        ("/abs/path/foo", "not a PEP 508 requirement"),
        ("foo==1.0 --hash=sha256:abc", "not a PEP 508 requirement"),
    ],
)
def test_normalize_refuses(line: str, why: str) -> None:
    with pytest.raises(RequirementError, match=why) as caught:
        normalize(["numpy", line])
    assert caught.value.index == 1
    assert caught.value.line == line


@pytest.mark.parametrize(
    ("left", "right", "same"),
    [
        ((["a==1", "b==2"], "3.11", "p"), (["b==2", "a==1"], "3.11", "p"), True),
        ((["a==1"], "3.11", "p"), (["a==1", "a == 1", "# c"], "3.11", "p"), True),
        ((["A_B==1"], "3.11", "p"), (["a-b==1"], "3.11", "p"), True),
        ((["a==1"], "3.11", "p"), (["a==1"], "3.11.7", "p"), True),
        ((["a==1"], "3.11", "p"), (["a==1"], "3.12", "p"), False),
        ((["a==1"], "3.11", "p"), (["a==1"], "3.11", "q"), False),
        ((["a==1"], "3.11", "p"), (["a==2"], "3.11", "p"), False),
        ((["a==1"], "3.11", "p"), (["a==1", "b"], "3.11", "p"), False),
    ],
)
def test_environment_digest(
    left: tuple[list[str], str, str], right: tuple[list[str], str, str], same: bool
) -> None:
    one, two = environment_digest(*left), environment_digest(*right)
    assert (one == two) is same
    assert len(one) == 20
    assert all(c in "0123456789abcdef" for c in one)


@pytest.mark.parametrize(
    ("requirements", "version"),
    [([], "3.11"), (["# only a comment"], "3.11"), (["a"], "3"), (["a"], "three.eleven")],
)
def test_environment_digest_refuses(requirements: list[str], version: str) -> None:
    with pytest.raises(ValueError, match=r"empty|major\.minor"):
        environment_digest(requirements, version, "p")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@idx.example/simple", "http://idx.example/simple"),
        ("https://token@idx.example:8443/simple/", "https://idx.example:8443/simple/"),
        ("https://pypi.org/simple", "https://pypi.org/simple"),
    ],
)
def test_public_url(url: str, shown: str) -> None:
    assert public_url(url) == shown
