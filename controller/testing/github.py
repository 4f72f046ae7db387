"""The fake GitHub: GitHub's REST API served from memory, for tests and the demo.

:class:`FakeGitHub` is a real HTTP server (standard library only, 127.0.0.1, a free port, a
daemon thread) that answers the operations of ``github-rest-subset.json`` -- GitHub's own
OpenAPI description cut down to what mdc calls -- the way GitHub documents them: issue
comments (list with ``per_page``/``page`` and a ``Link`` header, create, update, delete),
reactions on comments, commit statuses (create, list, combined), pull requests of a commit,
pull requests (get, list with ``head``/``state``/``base``, create), collaborator permission,
git refs (get, create), contents (get, create or update, with git blob shas) and
``/rate_limit``. Answers carry every field GitHub's response schemas require; errors use
GitHub's shapes (``message``, ``documentation_url``, ``errors``) and its limits (comment bodies
65,536 characters, status descriptions 140). Requests need ``Authorization: Bearer TOKEN``
(401), a ``User-Agent`` (403) and, unless ``strict_headers=False``, GitHub's JSON media type
and a supported ``X-GitHub-Api-Version``.

Owns the server: :class:`FakeGitHub` (state shortcuts, faults, the record, header checks,
rate limits and dispatch), what it records (:class:`RecordedRequest`) and scripted faults
(:class:`ScriptedResponse`). The repositories it serves are
:mod:`controller.testing.github_repo`, the operations :mod:`controller.testing.github_routes`
(their plumbing :mod:`controller.testing.github_route_io`), and the JSON it answers
:mod:`controller.testing.github_shapes`.

Tests seed and inspect the state of each :class:`~controller.testing.github_repo.FakeRepo`
(commits and refs, pulls, comments, statuses, permissions), script faults with
:meth:`FakeGitHub.fail_next`, and count calls in :attr:`FakeGitHub.requests`. Used by
``tests/integration/test_github.py`` and the demo; standard library only, it imports nothing
from mdc outside :mod:`controller.testing`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from controller.testing.github_repo import FakeComment, FakePull, FakeRepo
from controller.testing.github_route_io import DOCS, Reply, RouteRequest, error_reply
from controller.testing.github_routes import ROUTES
from controller.testing.github_shapes import GitHubShapes

__all__ = [
    "SUPPORTED_VERSIONS",
    "FakeGitHub",
    "RecordedRequest",
    "ScriptedResponse",
]

SUPPORTED_VERSIONS = ("2022-11-28", "2026-03-10")
_JSON_TYPES = (
    "application/vnd.github+json",
    "application/vnd.github.v3+json",
    "application/json",
    "application/vnd.github.raw+json",
    "application/vnd.github.object",
    "application/vnd.github.object+json",
)
_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, and what it answered."""

    method: str
    #: The path below the API root, as sent (percent-encoded), without the query.
    path: str
    query: Mapping[str, list[str]]
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes
    status: int = 0
    response_headers: Mapping[str, str] = field(default_factory=dict)
    response: bytes = b""

    def json(self) -> Any:
        """The request body as JSON."""
        return json.loads(self.body)

    def answer(self) -> Any:
        """The response body as JSON (None when empty)."""
        return json.loads(self.response) if self.response else None


@dataclass(frozen=True)
class ScriptedResponse:
    """A fault to answer instead of the real thing (see :meth:`FakeGitHub.fail_next`)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    method: str | None = None
    path: str | None = None
    disconnect: bool = False
    delay: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


class FakeGitHub(GitHubShapes):
    """GitHub's REST API for ``repository`` (and any added with :meth:`add_repo`).

    ``prefix`` serves the API below a path, as GitHub Enterprise Server does (``/api/v3``).
    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        repository: str = "octo-org/specs",
        *,
        token: str = "ghp_fake_token",
        login: str = "mdc-bot",
        prefix: str = "",
        default_branch: str = "main",
        strict_headers: bool = True,
        clock: Callable[[], float] = time.time,
        rate_limit: int = 5000,
    ) -> None:
        self.token = token
        self.login = login
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.strict_headers = strict_headers
        self.clock = clock
        self.rate_limit = rate_limit
        #: Requests counted against the primary rate limit in this window; set it to
        #: ``rate_limit`` to exhaust it.
        self.rate_used = 0
        self.rate_reset = int(clock()) + 3600
        self.repos: dict[str, FakeRepo] = {}
        self.default = self.add_repo(repository, default_branch=default_branch)
        self._user_ids: dict[str, int] = {}
        self._script: list[ScriptedResponse] = []
        #: Exceptions the fake itself raised while answering (answered 500); tests assert none.
        self.internal_errors: list[str] = []
        self._requests: list[RecordedRequest] = []
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- state shortcuts for the default repository ---------------------------------------

    @property
    def repo(self) -> FakeRepo:
        return self.default

    @property
    def pulls(self) -> dict[int, FakePull]:
        return self.default.pulls

    @property
    def commit_pulls(self) -> dict[str, list[int]]:
        return self.default.commit_pulls

    @property
    def permissions(self) -> dict[str, str]:
        return self.default.permissions

    @property
    def comments(self) -> dict[int, list[FakeComment]]:
        return self.default.comments

    @property
    def statuses(self) -> dict[str, list[dict[str, Any]]]:
        return self.default.statuses

    @property
    def refs(self) -> dict[str, str]:
        return self.default.refs

    def files(self, ref: str | None = None) -> dict[str, bytes]:
        return self.default.files(ref)

    def add_repo(self, full_name: str, *, default_branch: str = "main") -> FakeRepo:
        repo = FakeRepo(full_name, len(self.repos) + 1, default_branch, clock=self.clock)
        repo.commit({"README.md": f"# {full_name}\n"}, message="initial commit")
        self.repos[full_name.lower()] = repo
        return repo

    # -- faults and the record ---------------------------------------------------------------

    def fail_next(
        self,
        status: int = 503,
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        method: str | None = None,
        path: str | None = None,
        disconnect: bool = False,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` matching requests (``method``; ``path`` a regular
        expression searched in the path) with ``status`` instead. ``body`` is JSON-encoded
        unless bytes; by default GitHub's own for the status. ``disconnect`` closes the
        connection without answering; ``delay`` waits that many seconds first."""
        if body is None:
            raw = self._fault_body(status, headers or {})
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = json.dumps(body).encode()
        scripted = ScriptedResponse(
            status, dict(headers or {}), raw, method, path, disconnect, delay
        )
        with self._lock:
            self._script.extend([scripted] * times)

    @staticmethod
    def _fault_body(status: int, headers: Mapping[str, str]) -> bytes:
        lowered = {k.lower(): v for k, v in headers.items()}
        if status in {403, 429} and "retry-after" in lowered:
            message = (
                "You have exceeded a secondary rate limit. Please wait a few minutes before "
                "you try again."
            )
        elif status in {403, 429} and lowered.get("x-ratelimit-remaining") == "0":
            message = "API rate limit exceeded for user ID 1."
        elif status == 502:
            return b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
        elif status == 503:
            payload = {"code": "unavailable", "message": "Service unavailable"}
            return json.dumps({**payload, "documentation_url": DOCS}).encode()
        else:
            message = {401: "Bad credentials", 403: "Forbidden", 404: "Not Found"}.get(
                status, "Server Error" if status >= 500 else "Error"
            )
        payload = {"message": message, "documentation_url": DOCS, "status": str(status)}
        return json.dumps(payload).encode()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def calls(self, method: str, pattern: str = "") -> list[RecordedRequest]:
        """The requests with ``method`` whose path matches the regular expression ``pattern``."""
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # -- the server ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:PORT`` (plus the prefix)."""
        return f"{self.root}{self.prefix}"

    @property
    def root(self) -> str:
        """The server's own root (also used for ``html_url``s)."""
        if self._server is None:
            raise RuntimeError("FakeGitHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeGitHub:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called by the handler, one request at a time) -----------------

    def _take_fault(self, method: str, path: str) -> ScriptedResponse | None:
        with self._lock:
            for index, scripted in enumerate(self._script):
                if scripted.matches(method, path):
                    return self._script.pop(index)
        return None

    def _record(self, request: RecordedRequest) -> RecordedRequest:
        """Note a request as it arrives; :meth:`_answer` adds the answer."""
        with self._lock:
            self._requests.append(request)
        return request

    def _answer(
        self, asked: RecordedRequest, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        answered = RecordedRequest(
            asked.method, asked.path, asked.query, asked.headers, asked.body, status,
            dict(headers), body,
        )  # fmt: skip
        with self._lock:
            for index in range(len(self._requests) - 1, -1, -1):
                if self._requests[index] is asked:  # gone if clear_requests() ran meanwhile
                    self._requests[index] = answered
                    return

    def _rate_headers(self) -> dict[str, str]:
        if self.clock() >= self.rate_reset:
            self.rate_used = 0
            self.rate_reset = int(self.clock()) + 3600
        return {
            "x-ratelimit-limit": str(self.rate_limit),
            "x-ratelimit-remaining": str(max(0, self.rate_limit - self.rate_used)),
            "x-ratelimit-used": str(self.rate_used),
            "x-ratelimit-reset": str(self.rate_reset),
            "x-ratelimit-resource": "core",
        }

    def _check_headers(self, headers: Mapping[str, str]) -> None:
        if not headers.get("user-agent", "").strip():
            raise error_reply(
                403,
                "Request forbidden by administrative rules. Please make sure your request has "
                "a User-Agent header (https://docs.github.com/rest/overview/resources-in-the-"
                "rest-api#user-agent-required). Check https://developer.github.com for other "
                "possible causes.",
            )
        scheme, _, credential = headers.get("authorization", "").strip().partition(" ")
        if not credential:
            raise error_reply(401, "Requires authentication")
        if scheme.lower() not in {"bearer", "token"} or credential.strip() != self.token:
            raise error_reply(401, "Bad credentials")
        version = headers.get("x-github-api-version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            raise error_reply(400, f"API version {version} is not supported.")
        if self.strict_headers:
            if version is None:
                raise error_reply(400, "X-GitHub-Api-Version is required by this fake")
            types = [
                part.split(";")[0].strip().lower() for part in headers.get("accept", "").split(",")
            ]
            if not any(kind in _JSON_TYPES for kind in types):
                raise error_reply(
                    415,
                    f"Unsupported 'Accept' header: {headers.get('accept', '')!r}. Must accept "
                    "'application/vnd.github+json'.",
                )

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        if not path.startswith(self.prefix + "/"):
            raise error_reply(404, "Not Found")
        path = path[len(self.prefix) :]
        self._check_headers(headers)
        extra = self._rate_headers()
        if path != "/rate_limit":
            if self.rate_used >= self.rate_limit:
                reply = error_reply(
                    403,
                    f"API rate limit exceeded for user ID {self._user_id(self.login)}.",
                    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                )
                reply.headers.update(extra)
                raise reply
            self.rate_used += 1
            extra = self._rate_headers()
        for pattern, route in ROUTES:
            if (match := pattern.match(path)) is None:
                continue
            handler = route.get(method)
            if handler is None:
                raise error_reply(404, "Not Found")
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            repo = None
            if "owner" in params:
                repo = self.repos.get(f"{params.pop('owner')}/{params.pop('repo')}".lower())
                if repo is None:
                    raise error_reply(404, "Not Found")
            request = RouteRequest(self, repo, method, path, query, headers, body, params)
            try:
                reply = handler(request)
            except Reply as refusal:
                reply = refusal
            reply.headers = {**extra, **reply.headers}
            return reply
        raise error_reply(404, "Not Found")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeGitHub


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms each)
    server_version = "GitHub.com"
    sys_version = ""
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`FakeGitHub.requests` instead."""

    def _handle(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        length = self.headers.get("content-length", "0")
        size = int(length) if length.isdigit() else 0
        if size > _MAX_BODY:
            self.close_connection = True
            self._send(413, {}, b"")
            return
        body = self.rfile.read(size) if size else b""
        query = parse_qs(parts.query, keep_blank_values=True)
        relative = parts.path.removeprefix(fake.prefix) if fake.prefix else parts.path
        asked = fake._record(RecordedRequest(self.command, relative, query, headers, body))
        scripted = fake._take_fault(self.command, relative)
        if scripted is not None:
            if scripted.delay:
                time.sleep(scripted.delay)
            if scripted.disconnect:
                self.close_connection = True
                return
            with fake._lock:
                reply_headers = {**fake._rate_headers(), **scripted.headers}
            if not scripted.body.lstrip().startswith(b"<"):
                reply_headers["content-type"] = "application/json; charset=utf-8"
            else:
                reply_headers["content-type"] = "text/html"
            fake._answer(asked, scripted.status, reply_headers, scripted.body)
            self._send(scripted.status, reply_headers, scripted.body)
            return
        with fake._lock:
            try:
                reply = fake._dispatch(self.command, parts.path, query, headers, body)
            except Reply as answer:
                reply = answer
            except Exception as exc:  # a bug in the fake: say so rather than hang up
                fake.internal_errors.append(f"{self.command} {relative}: {exc!r}")
                reply = error_reply(500, f"FakeGitHub failed: {exc!r}")
        raw = b"" if reply.body is None else json.dumps(reply.body).encode()
        reply_headers = dict(reply.headers)
        reply_headers["x-github-api-version-selected"] = headers.get(
            "x-github-api-version", SUPPORTED_VERSIONS[0]
        )
        if raw:
            reply_headers["content-type"] = "application/json; charset=utf-8"
        fake._answer(asked, reply.status, reply_headers, raw)
        self._send(reply.status, reply_headers, raw)

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("x-github-request-id", f"FAKE:{id(self):x}")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout in a test)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle
