"""The loopback git servers in tests/gitservers.py are real: git CLI and pygit2 agree."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest

from tests.gitservers import (
    GitDaemon,
    GitHttpServer,
    GitServerError,
    free_port,
    git_env,
    live_group_members,
    make_bare_repo,
    missing_git_binaries,
    run_git,
)

USER, PASSWORD = "alice", "s3cret-pw"
FETCH_ALL = ["+refs/heads/*:refs/remotes/origin/*"]
MIB = 1024 * 1024


def require_git_binaries(missing: list[str]) -> None:
    """Skip when git pieces are missing, unless running under CI: then fail."""
    if not missing:
        return
    reason = f"git binaries missing: {', '.join(missing)}"
    if "CI" in os.environ:
        pytest.fail(f"{reason} (CI is set, so this is an error, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def _git_binaries() -> None:
    require_git_binaries(missing_git_binaries())


pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("_git_binaries")]


# -- helpers ---------------------------------------------------------------


def commit_file(work: Path, name: str, content: bytes | str, message: str) -> str:
    """Write a file in a git CLI work tree, commit it; the new commit's id."""
    path = work / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    run_git("-C", work, "add", name)
    run_git("-C", work, "commit", "-q", "-m", message)
    return head(work)


def head(repo: Path, rev: str = "HEAD") -> str:
    return run_git("-C", repo, "rev-parse", rev).stdout.strip()


def pygit2_commit(repo: pygit2.Repository, name: str, data: bytes, message: str) -> pygit2.Oid:
    """Commit one blob on refs/heads/main with pygit2 (no work tree needed)."""
    sig = pygit2.Signature("mdc tests", "tests@mdc.invalid")
    tip = repo.references.get("refs/heads/main")
    parents = [] if tip is None else [tip.target]
    builder = repo.TreeBuilder(tip.peel(pygit2.Tree)) if tip else repo.TreeBuilder()
    builder.insert(name, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
    return repo.create_commit("refs/heads/main", sig, sig, message, builder.write(), parents)


class PushRecorder(pygit2.RemoteCallbacks):
    """Callbacks that keep push_update_reference messages (pygit2 raises nothing)."""

    def __init__(self, credentials: pygit2.UserPass | None = None) -> None:
        super().__init__(credentials=credentials)
        self.updates: list[tuple[str, str | None]] = []

    def push_update_reference(self, refname: str, message: str | None) -> None:
        self.updates.append((refname, message))


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """The directory the servers export, with one empty bare repo `specs.git`."""
    base = tmp_path / "served"
    make_bare_repo(base, "specs")
    return base


@pytest.fixture
def daemon(served: Path) -> Iterator[GitDaemon]:
    with GitDaemon(served) as server:
        yield server


@pytest.fixture
def http(served: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(served) as server:
        yield server


@pytest.fixture
def http_auth(served: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(served, username=USER, password=PASSWORD) as server:
        yield server


# -- requirement rule ----------------------------------------------------------


def test_missing_binaries_skip_locally_and_fail_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = missing_git_binaries(path=str(tmp_path))  # an empty PATH: no git
    assert missing == ["git", "git-daemon", "git-http-backend"]
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="git binaries missing"):
        require_git_binaries(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_git_binaries(missing)
    require_git_binaries([])  # nothing missing: no skip, no failure


def test_make_bare_repo_config(tmp_path: Path) -> None:
    repo = make_bare_repo(tmp_path / "base", "models")
    assert repo == tmp_path / "base" / "models.git"
    assert run_git("-C", repo, "rev-parse", "--is-bare-repository").stdout.strip() == "true"
    assert run_git("-C", repo, "symbolic-ref", "HEAD").stdout.strip() == "refs/heads/main"
    assert run_git("-C", repo, "config", "http.receivepack").stdout.strip() == "true"
    assert run_git("-C", repo, "config", "receive.denyNonFastForwards").stdout.strip() == "false"


# -- git daemon ------------------------------------------------------------------


def test_daemon_cli_clone_commit_push_clone(daemon: GitDaemon, tmp_path: Path) -> None:
    url = daemon.url("specs")
    assert url == f"git://127.0.0.1:{daemon.port}/specs.git"
    work = tmp_path / "work"
    cloned = run_git("clone", url, work)
    assert "empty repository" in cloned.stderr
    sha = commit_file(work, "service.yaml", "kind: Service\n", "add service")
    run_git("-C", work, "push", "-q", "origin", "main")

    again = tmp_path / "again"
    run_git("clone", "-q", url, again)
    assert head(again) == sha
    assert (again / "service.yaml").read_text() == "kind: Service\n"


def test_daemon_pygit2_fetch_and_push(daemon: GitDaemon, served: Path, tmp_path: Path) -> None:
    url = daemon.url("specs")
    work = tmp_path / "work"
    run_git("clone", "-q", url, work)
    sha = commit_file(work, "a.yaml", "a: 1\n", "first")
    run_git("-C", work, "push", "-q", "origin", "main")

    repo = pygit2.init_repository(str(tmp_path / "mirror"), bare=True)
    repo.remotes.create_anonymous(url).fetch(FETCH_ALL)
    assert str(repo.references["refs/remotes/origin/main"].target) == sha

    # pygit2 pushes over git:// too, and the CLI sees it.
    repo.references.create("refs/heads/main", repo.references["refs/remotes/origin/main"].target)
    new = pygit2_commit(repo, "b.yaml", b"b: 2\n", "second, by pygit2")
    recorder = PushRecorder()
    repo.remotes.create_anonymous(url).push(["refs/heads/main:refs/heads/main"], callbacks=recorder)
    assert recorder.updates == [("refs/heads/main", None)]
    assert head(served / "specs.git", "main") == str(new)


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_daemon_outage_and_restart_on_same_port(
    daemon: GitDaemon, tmp_path: Path, outage: str
) -> None:
    url = daemon.url("specs")
    work = tmp_path / "work"
    run_git("clone", "-q", url, work)
    commit_file(work, "a.yaml", "a: 1\n", "first")
    run_git("-C", work, "push", "-q", "origin", "main")

    repo = pygit2.init_repository(str(tmp_path / "mirror"), bare=True)
    repo.remotes.create_anonymous(url).fetch(FETCH_ALL)
    port, pid = daemon.port, daemon.pid
    assert pid is not None

    getattr(daemon, outage)()
    assert not daemon.running
    assert daemon.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the daemon itself was reaped
    assert live_group_members(pid) == []  # and nothing it forked lives on
    with pytest.raises(pygit2.GitError, match="connect"):
        repo.remotes.create_anonymous(url).fetch(FETCH_ALL)
    assert run_git("ls-remote", url, check=False).returncode != 0

    sha = commit_file(work, "b.yaml", "b: 2\n", "while down")  # pushed after the restart
    daemon.restart()
    assert daemon.port == port
    assert daemon.url("specs") == url
    assert daemon.running
    run_git("-C", work, "push", "-q", "origin", "main")
    repo.remotes.create_anonymous(url).fetch(FETCH_ALL)
    assert str(repo.references["refs/remotes/origin/main"].target) == sha


def test_daemon_start_failure_reports_stderr(served: Path) -> None:
    # A socket bound (not listening) without SO_REUSEADDR: the daemon cannot
    # bind, connections are refused, and the daemon exits with a message.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        daemon = GitDaemon(served, port=port, startup_timeout=5)
        started = time.monotonic()
        with pytest.raises(GitServerError, match=r"did not start \(exited with") as info:
            daemon.start()
        assert time.monotonic() - started < 5
        assert str(port) in str(info.value)
        assert "stderr:\n" in str(info.value)
        assert "listen" in str(info.value).split("stderr:\n", 1)[1]
        assert not daemon.running

    # Something already listening there: refused before git daemon even runs.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        daemon = GitDaemon(served, port=listener.getsockname()[1])
        with pytest.raises(GitServerError, match="already in use"):
            daemon.start()
        assert not daemon.running


# -- smart HTTP ----------------------------------------------------------------


def test_http_cli_clone_commit_push_clone(
    http: GitHttpServer, served: Path, tmp_path: Path
) -> None:
    url = http.url("specs")
    assert url == f"http://127.0.0.1:{http.port}/specs.git"
    work = tmp_path / "work"
    assert "empty repository" in run_git("clone", url, work).stderr
    sha = commit_file(work, "service.yaml", "kind: Service\n", "add service")
    run_git("-C", work, "push", "-q", "origin", "main")
    assert head(served / "specs.git", "main") == sha

    again = tmp_path / "again"
    run_git("clone", "-q", url, again)
    assert head(again) == sha

    cloned = pygit2.clone_repository(url, str(tmp_path / "pygit2-clone"))
    assert str(cloned.head.target) == sha
    assert http.errors == []
    assert http.usernames == []  # no auth configured, none sent


def test_http_protocol_v2_and_gzip_request_bodies(http: GitHttpServer, tmp_path: Path) -> None:
    url = http.url("specs")
    work = tmp_path / "work"
    run_git("clone", "-q", url, work)
    base_sha = commit_file(work, "a", "a", "base")
    run_git("-C", work, "push", "-q", "origin", "main")

    assert base_sha in run_git("-c", "protocol.version=2", "ls-remote", url).stdout
    traced = run_git(
        "-c",
        "protocol.version=2",
        "clone",
        "-q",
        url,
        tmp_path / "v2",
        env=git_env(extra={"GIT_TRACE_PACKET": "1"}),
    )
    assert "version 2" in traced.stderr  # the server answered in protocol v2
    assert "version=2" in http.protocols

    # Many local commits the server lacks make a negotiation request over
    # 1 KiB, which git gzips; http-backend must be told (HTTP_CONTENT_ENCODING).
    # Dated after the common base, so negotiation walks them first.
    run_git("-C", work, "checkout", "-q", "-b", "local")
    for i in range(60):
        date = f"@{1_900_000_000 + i} +0000"
        env = git_env(extra={"GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date})
        run_git("-C", work, "commit", "-q", "--allow-empty", "-m", f"local {i}", env=env)
    other = tmp_path / "other"
    run_git("clone", "-q", url, other)
    new_sha = commit_file(other, "b", "b", "upstream")
    run_git("-C", other, "push", "-q", "origin", "main")
    run_git("-C", work, "-c", "protocol.version=2", "fetch", "-q", "origin")
    assert head(work, "origin/main") == new_sha
    assert "gzip" in http.content_encodings
    assert http.errors == []


def test_http_push_over_one_mib(http: GitHttpServer, served: Path, tmp_path: Path) -> None:
    url = http.url("specs")
    work = tmp_path / "work"
    run_git("clone", "-q", url, work)
    big = os.urandom(3 * MIB // 2)  # incompressible: the pack stays over 1 MiB
    sha = commit_file(work, "weights.bin", big, "big file")
    run_git("-C", work, "push", "-q", "origin", "main")
    assert http.chunked_requests >= 1  # over http.postBuffer: chunked upload
    assert head(served / "specs.git", "main") == sha

    again = tmp_path / "again"
    run_git("clone", "-q", url, again)
    assert (again / "weights.bin").read_bytes() == big

    # libgit2 pushes with a chunked body as well.
    repo = pygit2.Repository(str(again))
    new = pygit2_commit(repo, "more.bin", os.urandom(3 * MIB // 2), "bigger, by pygit2")
    chunked_before = http.chunked_requests
    recorder = PushRecorder()
    repo.remotes["origin"].push(["refs/heads/main:refs/heads/main"], callbacks=recorder)
    assert recorder.updates == [("refs/heads/main", None)]
    assert http.chunked_requests > chunked_before
    assert head(served / "specs.git", "main") == str(new)
    assert http.errors == []


def test_http_auth_cli(http_auth: GitHttpServer, tmp_path: Path) -> None:
    plain = run_git("clone", http_auth.url("specs"), tmp_path / "no-creds", check=False)
    assert plain.returncode != 0
    assert "terminal prompts disabled" in plain.stderr  # no hang: it asked, got nothing

    wrong = http_auth.url("specs", username=USER, password="wrong")
    bad = run_git("clone", wrong, tmp_path / "bad-creds", check=False)
    assert bad.returncode != 0
    assert "Authentication failed" in bad.stderr

    good = http_auth.url("specs", username=USER, password=PASSWORD)
    work = tmp_path / "work"
    run_git("clone", "-q", good, work)
    sha = commit_file(work, "a.yaml", "a: 1\n", "first")
    run_git("-C", work, "push", "-q", "origin", "main")
    assert run_git("ls-remote", good).stdout.split()[0] == sha
    assert http_auth.usernames.count(USER) >= 3
    assert http_auth.auth_failures >= 2
    assert http_auth.errors == []


def test_http_auth_pygit2(http_auth: GitHttpServer, tmp_path: Path) -> None:
    url = http_auth.url("specs")
    with pytest.raises(pygit2.GitError, match="authentication required"):
        pygit2.clone_repository(url, str(tmp_path / "no-creds"))
    assert http_auth.usernames == []  # nothing was sent

    callbacks = pygit2.RemoteCallbacks(credentials=pygit2.UserPass(USER, PASSWORD))
    repo = pygit2.clone_repository(url, str(tmp_path / "clone"), callbacks=callbacks)
    assert repo.head_is_unborn  # the served repo is still empty
    assert USER in http_auth.usernames

    sha = pygit2_commit(repo, "a.yaml", b"a: 1\n", "first, by pygit2")
    recorder = PushRecorder(credentials=pygit2.UserPass(USER, PASSWORD))
    repo.remotes["origin"].push(["refs/heads/main:refs/heads/main"], callbacks=recorder)
    assert recorder.updates == [("refs/heads/main", None)]

    mirror = pygit2.init_repository(str(tmp_path / "mirror"), bare=True)
    mirror.remotes.create_anonymous(url).fetch(FETCH_ALL, callbacks=callbacks)
    assert mirror.references["refs/remotes/origin/main"].target == sha
    assert http_auth.errors == []


class CountingCredentials(pygit2.RemoteCallbacks):
    """Answers every credential request with a fixed user and password.

    With ``give_up_after`` it raises instead once it was asked that many times.
    """

    def __init__(self, password: str, give_up_after: int | None = None) -> None:
        super().__init__()
        self.password = password
        self.give_up_after = give_up_after
        self.asked = 0

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: object
    ) -> pygit2.UserPass:
        self.asked += 1
        if self.give_up_after is not None and self.asked > self.give_up_after:
            raise PermissionError(f"credentials for {url} rejected")
        return pygit2.UserPass(USER, self.password)


def test_http_wrong_password_fails_fast(http_auth: GitHttpServer, tmp_path: Path) -> None:
    wrong = CountingCredentials("wrong")
    started = time.monotonic()
    with pytest.raises(pygit2.GitError, match="authentication replays"):
        pygit2.clone_repository(http_auth.url("specs"), str(tmp_path / "wrong"), callbacks=wrong)
    assert time.monotonic() - started < 5
    # libgit2 asks again after every 401 and gives up after 15 answers (the
    # last one is not even sent: 14 requests carried the user name).
    assert 1 < wrong.asked <= 15
    assert 1 <= http_auth.usernames.count(USER) <= wrong.asked

    # A callback that raises on the second ask stops it at once, with its error.
    once = CountingCredentials("wrong", give_up_after=1)
    with pytest.raises(PermissionError, match="rejected"):
        pygit2.clone_repository(http_auth.url("specs"), str(tmp_path / "once"), callbacks=once)
    assert once.asked == 2


def test_http_status_codes_and_headers(
    http_auth: GitHttpServer, served: Path, tmp_path: Path
) -> None:
    path = "/specs.git/info/refs?service=git-upload-pack"
    base = f"http://127.0.0.1:{http_auth.port}"

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base + path, timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Basic realm="git"'
    refused.value.close()

    opener = urllib.request.build_opener()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    opener.addheaders = [("Authorization", f"Basic {token}")]
    with opener.open(base + path, timeout=10) as ok:
        assert ok.status == 200
        assert ok.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
        assert ok.read().startswith(b"001e# service=git-upload-pack\n")

    # http-backend's own "Status:" header is passed on, not turned into 200.
    with pytest.raises(urllib.error.HTTPError) as missing:
        opener.open(f"{base}/nope.git/info/refs?service=git-upload-pack", timeout=10)
    assert missing.value.code == 404
    missing.value.close()
    assert http_auth.requests == 3
    assert http_auth.auth_failures == 1


def test_http_many_concurrent_requests(http: GitHttpServer, tmp_path: Path) -> None:
    url = http.url("specs")
    work = tmp_path / "work"
    run_git("clone", "-q", url, work)
    sha = commit_file(work, "a", "a", "first")
    run_git("-C", work, "push", "-q", "origin", "main")

    results: list[str] = []
    lock = threading.Lock()

    def ls_remote() -> None:
        out = run_git("ls-remote", url, "refs/heads/main", check=False, timeout=30)
        with lock:
            results.append(out.stdout.split()[0] if out.returncode == 0 else out.stderr)

    threads = [threading.Thread(target=ls_remote) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [sha] * 24
    assert http.errors == []


def test_http_stop_closes_port(served: Path) -> None:
    with GitHttpServer(served) as server:
        port = server.port
        assert run_git("ls-remote", server.url("specs")).returncode == 0
    assert not server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    server.stop()  # idempotent


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
