"""Real git servers on loopback, for tests.

Two servers, both the real thing rather than fakes:

* :class:`GitDaemon` runs ``git daemon`` (the ``git://`` protocol, fetch and push)
  as a subprocess in its own process group, so it can be stopped, killed and
  restarted on the same port to simulate an outage.
* :class:`GitHttpServer` serves smart HTTP (clone, fetch, push; protocol v2 too)
  by running ``git http-backend`` as a CGI program behind a small threaded
  ``http.server`` handler, with optional HTTP Basic auth.

``http.server``'s own CGI support is deliberately not used: it always answers
200, does not decode chunked request bodies (pushes over 1 MiB fail) and drops
the ``Content-Encoding`` request header (see FIELD-NOTES.md).

Standard library only, plus the git binaries. Both servers are context
managers; everything they start is stopped on exit, also when a test fails::

    with GitDaemon(tmp_path) as daemon:
        make_bare_repo(tmp_path, "specs")
        url = daemon.url("specs")          # git://127.0.0.1:PORT/specs.git

Subprocesses get an environment without inherited ``GIT_*`` variables (see
:func:`git_env`), so a test run from inside a git hook or with odd user config
still talks to the repositories it made.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.message
import functools
import http.server
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = [
    "GitDaemon",
    "GitHttpServer",
    "GitServerError",
    "SshServer",
    "free_port",
    "git_env",
    "git_exec_path",
    "live_group_members",
    "make_bare_repo",
    "missing_git_binaries",
    "run_git",
]

LOOPBACK = "127.0.0.1"

# Variables that would point git at some other repository, config or prompt.
_DROPPED_ENV_PREFIXES = ("GIT_",)
_DROPPED_ENV = frozenset(
    {
        "SSH_ASKPASS",
        "XDG_CONFIG_HOME",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    }
)
# Still useful when set: where to find CA certificates.
_KEPT_GIT_ENV = frozenset({"GIT_SSL_CAINFO", "GIT_SSL_CAPATH"})


class GitServerError(RuntimeError):
    """A test git server could not be started or misbehaved."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def git_env(home: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for git subprocesses that ignores the caller's git setup.

    Inherited ``GIT_*`` variables, proxies and askpass helpers are dropped; the
    system config is ignored; the global config is ``home/.gitconfig`` when
    ``home`` is given and empty otherwise; git never prompts on a terminal (a
    missing credential is an error, not a hang). Author and committer are fixed.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key in _KEPT_GIT_ENV
        or (not key.startswith(_DROPPED_ENV_PREFIXES) and key not in _DROPPED_ENV)
    }
    env.update(
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "mdc tests",
            "GIT_AUTHOR_EMAIL": "tests@mdc.invalid",
            "GIT_COMMITTER_NAME": "mdc tests",
            "GIT_COMMITTER_EMAIL": "tests@mdc.invalid",
            "LC_ALL": "C",
        }
    )
    if home is None:
        env["GIT_CONFIG_GLOBAL"] = os.devnull
    else:
        env["HOME"] = str(home)
        env["GIT_CONFIG_GLOBAL"] = str(home / ".gitconfig")
    if extra:
        env.update(extra)
    return env


def run_git(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``git ARGS`` with :func:`git_env` (unless ``env`` is given), text output.

    stdin is closed, so git can never wait for input. With ``check`` a non-zero
    exit raises :class:`GitServerError` carrying git's stderr.
    """
    argv = ["git", *(os.fspath(a) for a in args)]
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else git_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise GitServerError(
            f"{' '.join(argv)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def missing_git_binaries(path: str | None = None) -> list[str]:
    """Which of ``git``, ``git-daemon`` and ``git-http-backend`` are missing.

    ``path`` overrides ``$PATH`` for finding ``git``; the other two are looked
    up in git's exec path (``git --exec-path``). An empty list means all three
    are there.
    """
    git = shutil.which("git", path=path)
    if git is None:
        return ["git", "git-daemon", "git-http-backend"]
    try:
        exec_path = subprocess.run(
            [git, "--exec-path"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ["git", "git-daemon", "git-http-backend"]
    return [
        name
        for name in ("git-daemon", "git-http-backend")
        if not os.access(Path(exec_path) / name, os.X_OK)
    ]


@functools.cache
def git_exec_path() -> Path:
    """Where git keeps its helper programs (``git --exec-path``)."""
    out = subprocess.run(
        ["git", "--exec-path"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return Path(out.stdout.strip())


def live_group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid``.

    Reads /proc where there is one; elsewhere it can only tell whether the
    group exists, and then answers ``[pgid]``.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid pgrp ..."; comm may hold spaces and parens.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def make_bare_repo(base: Path, name: str) -> Path:
    """``git init --bare base/NAME.git`` on branch ``main``, open for pushes.

    Sets ``http.receivepack true`` (pushes over HTTP without REMOTE_USER) and
    ``receive.denyNonFastForwards false`` (force-pushes are allowed).
    """
    base.mkdir(parents=True, exist_ok=True)
    repo = base / f"{name}.git"
    run_git("init", "--quiet", "--bare", "--initial-branch=main", repo)
    run_git("-C", repo, "config", "http.receivepack", "true")
    run_git("-C", repo, "config", "receive.denyNonFastForwards", "false")
    return repo


def _wait_for_port(port: int, deadline: float) -> bool:
    """Whether 127.0.0.1:PORT accepts a connection before ``deadline`` (tried once at least)."""
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


class GitDaemon:
    """``git daemon`` serving every repository under ``base`` over ``git://``.

    Fetch and push (``--enable=receive-pack``) on 127.0.0.1. ``stop()`` ends it
    gracefully, ``kill()`` with SIGKILL (a crash); both end the whole process
    group, including the per-connection children. ``restart()`` starts it again
    on the same port. Use it as a context manager.
    """

    def __init__(
        self, base: Path, *, port: int | None = None, startup_timeout: float = 10.0
    ) -> None:
        self.base = base.resolve()
        self.port: int = port if port is not None else free_port()
        self._fixed_port = port is not None
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._last_stderr = ""
        self.starts = 0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the daemon process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The daemon's PID (also its process group), or None when stopped."""
        return self._proc.pid if self._proc is not None else None

    def url(self, name: str) -> str:
        """``git://127.0.0.1:PORT/NAME.git``."""
        return f"git://{LOOPBACK}:{self.port}/{name}.git"

    def _argv(self) -> list[str]:
        # `git daemon` is a wrapper that runs git-daemon as its child; run the
        # real program directly so that it is our child and we reap it. (Where
        # PID 1 does not reap orphans, a killed wrapper leaves a zombie
        # git-daemon in the group forever.)
        return [
            str(git_exec_path() / "git-daemon"),
            "--export-all",
            f"--base-path={self.base}",
            f"--listen={LOOPBACK}",
            f"--port={self.port}",
            "--enable=receive-pack",
            "--reuseaddr",
            "--informative-errors",
            str(self.base),
        ]

    def start(self) -> None:
        """Start the daemon and wait until its port accepts connections.

        When the port was chosen here and turns out to be taken, a fresh one is
        tried (at most three times); a port passed in, or one that a restart
        must keep, is never changed.
        """
        if self.running:
            raise GitServerError(f"git daemon already running on port {self.port}")
        attempts = 1 if (self._fixed_port or self.starts) else 3
        for attempt in range(attempts):
            error = self._start_once()
            if error is None:
                self.starts += 1
                return
            if attempt + 1 < attempts:
                self.port = free_port()
        raise GitServerError(error)

    def _start_once(self) -> str | None:
        """Start once; None when it serves, else the reason it does not."""
        # Readiness is "the port accepts connections": that proves nothing if
        # something else already listens there.
        if _wait_for_port(self.port, time.monotonic()):
            return f"port {LOOPBACK}:{self.port} is already in use by another process"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _reap
        self._proc = subprocess.Popen(
            self._argv(),
            env=git_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            start_new_session=True,  # own process group: stop() kills it all
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _wait_for_port(self.port, min(deadline, time.monotonic() + 0.2)):
                if self._proc.poll() is None:
                    return None
                break  # someone else answers on that port
        stderr = self._read_stderr()
        code = self._proc.poll()
        self._signal_group(signal.SIGKILL)
        self._reap()
        state = f"exited with {code}" if code is not None else "still not listening"
        return (
            f"git daemon on {LOOPBACK}:{self.port} did not start "
            f"({state} after up to {self.startup_timeout:.1f} s); stderr:\n{stderr}"
        )

    def _read_stderr(self) -> str:
        if self._stderr is None:
            return self._last_stderr
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    @property
    def stderr(self) -> str:
        """What the current (or last) daemon process wrote so far.

        Expect a "remote end hung up" line per start: the readiness probe
        connects and closes without a request.
        """
        return self._read_stderr()

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        # The group id is the leader's PID (start_new_session). A group cannot
        # be reused while any member lives; once it is empty this raises.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _reap(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait(timeout=10)
            self._proc = None
        if self._stderr is not None:
            self._last_stderr = self._read_stderr()
            self._stderr.close()
            self._stderr = None

    def _wait_port_closed(self) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.02)

    def _end_group(self) -> None:
        """Reap the daemon; SIGKILL what is left of its group until none lives."""
        if self._proc is None:
            return
        pgid = self._proc.pid
        self._reap()
        deadline = time.monotonic() + 5
        while live_group_members(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.01)
        self._wait_port_closed()

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 5 s; wait for it. Idempotent."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
        # Children serving open connections are in the group too.
        self._signal_group(signal.SIGKILL)
        self._end_group()

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash); wait for it."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self._end_group()

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()


def _read_exact(rfile: io.BufferedIOBase, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) != size:
        raise ConnectionError(f"request body ended after {len(data)} of {size} bytes")
    return data


def _read_chunked(rfile: io.BufferedIOBase) -> bytes:
    """Decode a ``Transfer-Encoding: chunked`` body (trailers are discarded)."""
    parts: list[bytes] = []
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ConnectionError("request body ended inside a chunk header")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as err:
            raise ConnectionError(f"bad chunk size line {line!r}") from err
        if size == 0:
            break
        parts.append(_read_exact(rfile, size))
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise ConnectionError("chunk not followed by CRLF")
    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
        pass
    return b"".join(parts)


def _split_cgi_output(output: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Status, reason, headers and body of a CGI program's output."""
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := output.find(sep)) >= 0]
    if not ends:
        raise GitServerError(f"CGI output without a header block: {output[:200]!r}")
    end, sep_len = min(ends)
    head, body = output[:end], output[end + sep_len :]
    status, reason = 200, "OK"
    headers: list[tuple[str, str]] = []
    for raw in head.replace(b"\r\n", b"\n").split(b"\n"):
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code)
            reason = reason.strip()
        elif name.lower() not in ("content-length", "transfer-encoding", "connection"):
            headers.append((name, value))
    return status, reason, headers, body


class _GitHttpd(http.server.ThreadingHTTPServer):
    """Threaded HTTP server that remembers its open connections."""

    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    allow_reuse_address = True
    owner: GitHttpServer

    def __init__(self, address: tuple[str, int], owner: GitHttpServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _GitHttpHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake handler threads blocked on kept-alive connections."""
        with self._conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request is routine; anything else is kept
        # for the test to look at (and printed, as the base class does).
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError | TimeoutError):
            return
        self.owner._record_error(f"{type(err).__name__}: {err}")
        super().handle_error(request, client_address)


class _GitHttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, 100-continue, chunked uploads
    server_version = "mdc-test-git-http/1"
    timeout = 60  # idle kept-alive connections do not pin a thread forever
    server: _GitHttpd

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read the counters instead

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in encoding:
            self.server.owner._count("chunked_requests")
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return _read_exact(self.rfile, length) if length else b""

    def _authenticate(self) -> str | None:
        """The authenticated user name ('' without auth), or None when refused."""
        owner = self.server.owner
        if owner.username is None:
            return ""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(token.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        owner._record_username(user)
        if user == owner.username and password == owner.password:
            return user
        return None

    def _send(
        self, status: int, reason: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> None:
        self.send_response(status, reason or None)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _serve(self) -> None:
        owner = self.server.owner
        owner._count("requests")
        # Read the whole body first, even for a request that will be refused,
        # so that a kept-alive connection stays in step.
        body = self._read_body()
        user = self._authenticate()
        if user is None:
            owner._count("auth_failures")
            self._send(
                401,
                "Unauthorized",
                [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Type", "text/plain")],
                b"authentication required\n",
            )
            return
        status, reason, headers, out = owner._run_backend(
            method=self.command,
            target=self.path,
            headers=self.headers,
            body=body,
            user=user,
            client=self.client_address[0],
        )
        self._send(status, reason, headers, out)


class GitHttpServer:
    """Smart HTTP for every repository under ``base``, via ``git http-backend``.

    Clone, fetch and push, protocol v2 included (the ``Git-Protocol`` header is
    passed on as ``GIT_PROTOCOL``), gzip-encoded and chunked request bodies.
    With ``username`` and ``password`` every request needs HTTP Basic auth with
    exactly those, else 401 with ``WWW-Authenticate: Basic realm="git"``.

    Counters for tests (read them after the clients finished): ``requests``,
    ``auth_failures``, ``chunked_requests``; lists: ``usernames`` (every Basic
    user name received, right or wrong), ``protocols`` (``Git-Protocol``
    headers), ``content_encodings`` (request ``Content-Encoding`` headers),
    ``errors`` (http-backend failures and handler exceptions).
    """

    def __init__(
        self,
        base: Path,
        username: str | None = None,
        password: str | None = None,
        *,
        port: int = 0,
        backend_timeout: float = 60.0,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.base = base.resolve()
        self.username = username
        self.password = password
        self.backend_timeout = backend_timeout
        self._requested_port = port
        self.port = port
        self._lock = threading.Lock()
        self.requests = 0
        self.auth_failures = 0
        self.chunked_requests = 0
        self.usernames: list[str] = []
        self.protocols: list[str] = []
        self.content_encodings: list[str] = []
        self.errors: list[str] = []
        self._httpd: _GitHttpd | None = None
        self._thread: threading.Thread | None = None
        self._env = git_env()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, name: str, *, username: str | None = None, password: str | None = None) -> str:
        """``http://127.0.0.1:PORT/NAME.git``, with ``user:password@`` if given."""
        auth = ""
        if username is not None:
            auth = urllib.parse.quote(username, safe="")
            if password is not None:
                auth += ":" + urllib.parse.quote(password, safe="")
            auth += "@"
        return f"http://{auth}{LOOPBACK}:{self.port}/{name}.git"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> None:
        """Bind (port 0 picks a free one) and serve in a background thread."""
        if self._httpd is not None:
            raise GitServerError(f"git HTTP server already running on port {self.port}")
        httpd = _GitHttpd((LOOPBACK, self._requested_port), self)
        self.port = httpd.server_address[1]
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"git-http-{self.port}",
            daemon=True,
        )
        self._httpd, self._thread = httpd, thread
        thread.start()

    def stop(self) -> None:
        """Stop serving, close open connections, join all threads. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.drop_connections()
        httpd.server_close()  # joins the handler threads
        if thread is not None:
            thread.join(timeout=10)

    # -- bookkeeping, called from handler threads ---------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _record_username(self, user: str) -> None:
        with self._lock:
            self.usernames.append(user)

    def _record_error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def _run_backend(
        self,
        *,
        method: str,
        target: str,
        headers: email.message.Message,
        body: bytes,
        user: str,
        client: str,
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Run ``git http-backend`` for one request: status, reason, headers, body."""
        parts = urllib.parse.urlsplit(target)
        env = dict(self._env)
        env.update(
            {
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "SERVER_SOFTWARE": _GitHttpHandler.server_version,
                "SERVER_NAME": LOOPBACK,
                "SERVER_PORT": str(self.port),
                "REMOTE_ADDR": client,
                "GIT_PROJECT_ROOT": str(self.base),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": method,
                "PATH_INFO": urllib.parse.unquote(parts.path),
                "QUERY_STRING": parts.query,
                "CONTENT_LENGTH": str(len(body)),
            }
        )
        if content_type := headers.get("Content-Type"):
            env["CONTENT_TYPE"] = content_type
        if encoding := headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = encoding
            with self._lock:
                self.content_encodings.append(encoding)
        if protocol := headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = protocol
            with self._lock:
                self.protocols.append(protocol)
        if user:
            env["REMOTE_USER"] = user
            env["AUTH_TYPE"] = "Basic"
        try:
            proc = subprocess.run(
                ["git", "http-backend"],
                input=body,
                env=env,
                capture_output=True,
                timeout=self.backend_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self._record_error(f"http-backend timed out: {method} {target}")
            return 504, "Gateway Timeout", [], b"git http-backend timed out\n"
        stderr = proc.stderr.decode(errors="replace").strip()
        if stderr:
            self._record_error(f"{method} {target}: {stderr}")
        try:
            return _split_cgi_output(proc.stdout)
        except GitServerError as err:
            self._record_error(f"{method} {target}: exit {proc.returncode}: {err}")
            text = f"git http-backend failed (exit {proc.returncode}):\n{stderr}\n"
            return 500, "Internal Server Error", [("Content-Type", "text/plain")], text.encode()


class SshServer:
    """A real OpenSSH ``sshd`` on 127.0.0.1 serving git over ssh to the current user.

    Everything lives in ``workdir``: a host key, a client key pair
    (:attr:`client_key`, with ``.pub`` beside it) whose public half is the only
    authorized key, and a ``known_hosts`` file (:attr:`known_hosts`) with the
    host key. ``sshd`` runs in the foreground (``-D``) in its own process group
    and is stopped by PID. Needs the ``sshd`` binary (Debian ``openssh-server``).
    """

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.client_key = self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.user = os.environ.get("USER") or "root"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("sshd") or (
            "/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None
        )

    def url(self, repo: Path) -> str:
        return f"ssh://{self.user}@{LOOPBACK}:{self.port}{repo}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        sshd = self.binary()
        if sshd is None:
            raise GitServerError("sshd is not installed (Debian package openssh-server)")
        host_key = self.dir / "host_ed25519"
        for key in (host_key, self.client_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
                )
        authorized = self.dir / "authorized_keys"
        authorized.write_bytes(self.client_key.with_suffix(".pub").read_bytes())
        authorized.chmod(0o600)
        host_pub = host_key.with_suffix(".pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[{LOOPBACK}]:{self.port} {' '.join(host_pub)}\n")
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {LOOPBACK}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"SetEnv PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self._proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        if not _wait_for_port(self.port, time.monotonic() + 10):
            self.stop()
            raise GitServerError(f"sshd did not listen on port {self.port}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
