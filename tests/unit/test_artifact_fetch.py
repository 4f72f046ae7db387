"""Artifact fetches on a leash (issue 18, item 4): public addresses only unless
allowed, redirects within the origin, credentials only to their host, deadlines,
a size cap while streaming, LFS pointers and HTML pages refused. Every server
here is a loopback ``http.server``; nothing leaves the machine."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import ipaddress
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.adapters.packaging import LFS_POINTER, FetchPolicy, Packager
from controller.app.daemon import load_config
from controller.errors import MdcError, PermanentError, TransientError
from controller.spec.kinds import Artifact, Model
from controller.spec.loader import load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO

DATA = b'{"weights": [1, 2, 3]}\n' * 40
DIGEST = hashlib.sha256(DATA).hexdigest()
LOOPBACK = FetchPolicy(networks=(ipaddress.ip_network("127.0.0.0/8"),), total_timeout=5.0)
POINTER = LFS_POINTER + b"\noid sha256:" + b"a" * 64 + b"\nsize 123\n"


class Server:
    """A loopback HTTP server whose answers are functions of the path; it records
    every request's path and Authorization header."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
        self.seen: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.seen.append((self.path, self.headers.get("Authorization")))
                route = owner.routes.get(self.path)
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def body(data: bytes, content_type: str = "application/octet-stream") -> Callable[..., None]:
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return answer


def redirect(location: str) -> Callable[..., None]:
    def answer(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return answer


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    a, b = Server(), Server()
    for s in (a, b):
        s.routes["/ok.bin"] = body(DATA)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture(scope="module")
def base_model() -> Model:
    result = load_desired(DirTree(EXAMPLE_REPO))
    assert result.ok, result.diagnostics
    return result.desired.models["fraud-scorer"]


def packager(tmp_path: Path, policy: FetchPolicy = LOOPBACK) -> Packager:
    return Packager(tmp_path / "home", tmp_path / "state", fetch=policy, sleep=lambda _: None)


def fetch(
    tmp_path: Path, model: Model, url: str, policy: FetchPolicy = LOOPBACK, digest: str = DIGEST
) -> Path:
    with_url = dataclasses.replace(model, artifact=Artifact(url=url, sha256=digest))
    return packager(tmp_path, policy)._download(with_url)


def refused(tmp_path: Path, model: Model, url: str, policy: FetchPolicy = LOOPBACK) -> MdcError:
    with pytest.raises(MdcError) as caught:
        fetch(tmp_path, model, url, policy)
    assert not list((tmp_path / "state" / "downloads").iterdir())  # nothing half-written
    return caught.value


def test_a_plain_fetch_from_an_allowed_network_works(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, _ = servers
    assert fetch(tmp_path, base_model, a.url("/ok.bin")).read_bytes() == DATA


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_refused_unless_allowed(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server], host: str
) -> None:
    a, _ = servers
    url = a.url("/ok.bin").replace("127.0.0.1", host)
    error = refused(tmp_path, base_model, url, FetchPolicy())
    assert isinstance(error, PermanentError)
    assert "(loopback)" in str(error)
    assert "artifactNetworks" in str(error)
    assert a.seen == []  # refused before connecting


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:169.254.169.254]/latest/", "link-local"),
        ("http://10.1.2.3/model.bin", "private"),
        ("http://192.168.0.1/model.bin", "private"),
        ("http://224.0.0.1/model.bin", "multicast"),
        ("http://0.0.0.0/model.bin", "unspecified"),
    ],
)
def test_metadata_private_and_multicast_addresses_are_refused(
    tmp_path: Path, base_model: Model, url: str, kind: str
) -> None:
    error = refused(tmp_path, base_model, url)  # loopback allowed, these are not
    assert isinstance(error, PermanentError)
    assert f"({kind})" in str(error)


def test_a_redirect_to_another_origin_is_refused_and_the_token_stays_home(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, b = servers
    a.routes["/to-other"] = redirect(b.url("/ok.bin"))
    policy = dataclasses.replace(
        LOOPBACK, token="s3cret-artifact-token", token_origin=("http", "127.0.0.1", a.port)
    )
    error = refused(tmp_path, base_model, a.url("/to-other"), policy)
    assert isinstance(error, PermanentError)
    assert "redirected to another origin" in str(error)
    assert a.seen == [("/to-other", "Bearer s3cret-artifact-token")]
    assert b.seen == []  # the other host got nothing, least of all the token


def test_the_token_goes_only_to_its_own_origin(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, b = servers
    policy = dataclasses.replace(
        LOOPBACK, token="s3cret-artifact-token", token_origin=("http", "127.0.0.1", a.port)
    )
    fetch(tmp_path / "1", base_model, b.url("/ok.bin"), policy)
    assert b.seen == [("/ok.bin", None)]


def test_a_redirect_within_the_origin_is_followed(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, _ = servers
    a.routes["/moved"] = redirect("/ok.bin")
    assert fetch(tmp_path, base_model, a.url("/moved")).read_bytes() == DATA
    assert [path for path, _ in a.seen] == ["/moved", "/ok.bin"]


def test_a_redirect_loop_is_a_clear_error(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, _ = servers
    a.routes["/loop-a"] = redirect("/loop-b")
    a.routes["/loop-b"] = redirect("/loop-a")
    error = refused(tmp_path, base_model, a.url("/loop-a"))
    assert isinstance(error, PermanentError)
    assert "redirect loop" in str(error)
    assert "/loop-a -> " in str(error)
    assert "/loop-b -> " in str(error)


def test_a_server_that_drips_is_cut_off_at_the_total_deadline(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, _ = servers

    def drip(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "40")
        h.end_headers()
        try:
            for _ in range(40):
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(0.25)  # never long enough for a read timeout
        except OSError:
            pass

    a.routes["/drip"] = drip
    policy = dataclasses.replace(LOOPBACK, total_timeout=1.0)
    began = time.monotonic()
    error = refused(tmp_path, base_model, a.url("/drip"), policy)
    assert time.monotonic() - began < 4.0  # 10 s of dripping, cut off at 1 s
    assert isinstance(error, TransientError)
    assert "total deadline of 1 s" in str(error)


def test_the_size_cap_holds_while_streaming(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, _ = servers

    def endless(h: http.server.BaseHTTPRequestHandler) -> None:  # no Content-Length
        h.protocol_version = "HTTP/1.0"
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        try:
            for _ in range(64):
                h.wfile.write(b"y" * 1024)
        except OSError:
            pass

    a.routes["/endless"] = endless
    policy = dataclasses.replace(LOOPBACK, max_bytes=4096)
    error = refused(tmp_path, base_model, a.url("/endless"), policy)
    assert isinstance(error, PermanentError)
    assert error.reason == "ArtifactTooBig"
    assert "4096 byte cap" in str(error)


def test_a_served_lfs_pointer_is_refused(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, _ = servers
    a.routes["/model.bin"] = body(POINTER, "text/plain")
    error = refused(tmp_path, base_model, a.url("/model.bin"))
    assert isinstance(error, PermanentError)
    assert "Git LFS pointer" in str(error)


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/octet-stream"])
def test_an_html_page_is_refused(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server], content_type: str
) -> None:
    a, _ = servers
    page = b"\n<!DOCTYPE html><html><body>Sign in to continue</body></html>\n"
    a.routes["/model.bin"] = body(page, content_type)
    error = refused(tmp_path, base_model, a.url("/model.bin"))
    assert isinstance(error, PermanentError)
    assert "HTML page" in str(error)


def test_an_lfs_pointer_in_the_repo_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE_REPO, repo)
    (repo / "artifacts" / "fraud-scorer" / "v1.json").write_bytes(POINTER)
    tree = DirTree(repo)
    result = load_desired(tree)
    assert result.ok, result.diagnostics
    with pytest.raises(PermanentError) as caught:
        packager(tmp_path).import_artifact(result.desired.models["fraud-scorer"], tree)
    assert "Git LFS pointer" in str(caught.value)
    assert "git lfs pull" in str(caught.value)


def test_not_found_is_permanent_and_unavailable_is_retried(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, _ = servers
    assert isinstance(refused(tmp_path, base_model, a.url("/missing")), PermanentError)

    def busy(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(503)
        h.send_header("Content-Length", "0")
        h.end_headers()

    a.routes["/busy"] = busy
    error = refused(tmp_path, base_model, a.url("/busy"))
    assert isinstance(error, TransientError)
    assert "HTTP 503" in str(error)
    assert [p for p, _ in a.seen].count("/busy") == 3  # retried


def test_messages_do_not_show_the_query(
    tmp_path: Path, base_model: Model, servers: tuple[Server, Server]
) -> None:
    a, _ = servers
    error = refused(tmp_path, base_model, a.url("/missing?X-Amz-Signature=s3cret"))
    assert "s3cret" not in str(error)
    assert "/missing" in str(error)


# -- the policy from the environment and mdc.yaml ------------------------------------


def test_the_token_needs_its_host() -> None:
    with pytest.raises(PermanentError) as caught:
        FetchPolicy.from_env({"MDC_ARTIFACT_TOKEN": "t"})
    assert caught.value.reason == "BadConfig"
    assert "MDC_ARTIFACT_TOKEN_HOST" in str(caught.value)


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("artifacts.example", ("https", "artifacts.example", 443)),
        ("artifacts.example:8443", ("https", "artifacts.example", 8443)),
        ("http://127.0.0.1:9000", ("http", "127.0.0.1", 9000)),
    ],
)
def test_the_token_belongs_to_one_origin(host: str, origin: tuple[str, str, int]) -> None:
    policy = FetchPolicy.from_env({"MDC_ARTIFACT_TOKEN": "t", "MDC_ARTIFACT_TOKEN_HOST": host})
    assert policy.token_origin == origin
    assert "'t'" not in repr(policy)


def test_no_token_without_the_variable() -> None:
    policy = FetchPolicy.from_env({"MDC_GIT_TOKEN": "git", "GITHUB_TOKEN": "gh"})
    assert policy.token is None


def test_mdc_yaml_takes_artifact_networks_and_timeout(tmp_path: Path) -> None:
    good = tmp_path / "mdc.yaml"
    good.write_text("artifactNetworks: [127.0.0.0/8, 10.20.0.1]\nartifactTimeout: 120\n")
    config = load_config(good)
    assert config.artifact_networks == ("127.0.0.0/8", "10.20.0.1")
    assert config.artifact_timeout == 120.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("artifactNetworks: [not-a-net]\nartifactTimeout: .nan\n")
    with pytest.raises(PermanentError) as caught:
        load_config(bad)
    assert "bad.yaml:1:" in str(caught.value)
    assert "'not-a-net'" in str(caught.value)
    assert "bad.yaml:2:" in str(caught.value)
    assert "artifactTimeout" in str(caught.value)
