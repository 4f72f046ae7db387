"""GitHub webhooks in: signatures, the events mdc acts on, and the server receiving them.

Owns the fast path of change detection (DESIGN.md: "webhook, or the poll as a
fallback"). :class:`WebhookServer` caps a delivery's size before reading it, checks
its ``X-Hub-Signature-256`` HMAC in constant time, parses ``push``, ``pull_request``
and ``issue_comment`` into frozen dataclasses, drops redelivered ``X-GitHub-Delivery``
ids, and hands each event to a callback: the watch loop's records it and fires a
:class:`Trigger`, so a burst of pushes costs one reconcile pass. Signatures carry no
timestamp and deliveries get lost: polling keeps mdc correct, webhooks make it prompt.

The same server answers the controller's GET ``routes`` (``/healthz``, ``/readyz``,
``/metrics``, the dashboard) on the same port, so one port serves everything. Every
answer, errors included, carries :data:`SECURITY_HEADERS` and a Content-Security-Policy
that allows nothing (inline styles only on HTML pages, which the dashboard needs).

Forge checks: an event about a repository other than the one configured
(``repository=``) is answered 202 and ignored, with a log line; a body nested
deeper than :data:`MAX_DEPTH` (or too deep for the parser) is answered 400.

Called by the controller's watch loop and by ``mdc run``. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from controller.errors import PermanentError, Reason

__all__ = [
    "CSP",
    "CSP_HTML",
    "MAX_DEPTH",
    "SECURITY_HEADERS",
    "Event",
    "IssueCommentEvent",
    "PullRequestEvent",
    "PushEvent",
    "Route",
    "Trigger",
    "WebhookServer",
    "load_secret",
    "parse_event",
    "verify_signature",
]

log = logging.getLogger(__name__)

#: A GET handler: no arguments, returns (status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]

MAX_BODY = 1 << 20
#: Deepest nesting of arrays and objects accepted in a delivery (GitHub's are under 10).
MAX_DEPTH = 64
#: Sent on every HTTP answer: no sniffing, no framing, no referrer.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
#: The Content-Security-Policy of every answer; HTML pages may also use inline styles.
CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
CSP_HTML = CSP + "; style-src 'unsafe-inline'"
DELIVERY_MEMORY = 1000
READ_TIMEOUT = 10.0  # seconds a client may take to send its request
_PREFIX = "sha256="
_LINGER_BYTES, _LINGER_SECONDS = 1 << 16, 1.0  # unread body discarded before closing


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is ``sha256=<hex>`` of the HMAC-SHA256 of ``body`` under ``secret``,
    compared in constant time. Hex may be upper case; an empty secret never verifies."""
    if not secret or header is None or not header.startswith(_PREFIX):
        return False
    given = header[len(_PREFIX) :]
    if len(given) != 2 * hashlib.sha256().digest_size or not set(given) <= set(string.hexdigits):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).digest()
    return hmac.compare_digest(expected, bytes.fromhex(given))


class Trigger:
    """A level-triggered wake-up: any number of :meth:`fire` calls before the waiter
    wakes count as one. Safe to fire from any thread."""

    def __init__(self) -> None:
        self._cond, self._pending, self._fired = threading.Condition(), False, 0

    def fire(self) -> None:
        with self._cond:
            self._pending = True
            self._fired += 1
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """True if fired since the last wait returned (clearing it), False on timeout."""
        with self._cond:
            woke = self._cond.wait_for(lambda: self._pending, timeout)
            self._pending = False
            return woke

    @property
    def fired(self) -> int:  # how many times fire() was called in all
        with self._cond:
            return self._fired


@dataclass(frozen=True)
class PushEvent:
    """Commits pushed to (or a ref created or deleted in) ``repository`` (``owner/name``)."""

    ref: str
    before: str
    after: str
    forced: bool
    repository: str

    @property
    def deleted(self) -> bool:  # GitHub sends an all-zero ``after`` when ``ref`` is deleted
        return set(self.after) == {"0"}


@dataclass(frozen=True)
class PullRequestEvent:
    """Activity on pull request ``number``: ``action`` is GitHub's (opened, synchronize...)."""

    action: str
    number: int
    head_sha: str
    head_ref: str
    base_ref: str
    repository: str
    merged: bool = False  # a ``closed`` PR that was merged (``pull_request.merged``)


@dataclass(frozen=True)
class IssueCommentEvent:
    """A comment on an issue or a pull request. ``user`` is the login of the account that
    acted (GitHub's ``sender``): the author for ``created``, the editor for ``edited``.
    The comment's own ``user`` can be null (a deleted account), ``sender`` never is."""

    action: str
    issue_number: int
    is_pull_request: bool
    body: str
    user: str
    repository: str


Event = PushEvent | PullRequestEvent | IssueCommentEvent

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", dict: "an object"}


def _field(payload: dict[str, Any], event: str, path: str, kind: type) -> Any:
    node: Any = payload
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{event} payload lacks the field {path!r}")
        node = node[key]
    # bool is an int in Python; a JSON true must not pass for a number
    if not isinstance(node, kind) or (kind is int and isinstance(node, bool)):
        raise ValueError(f"{event} payload field {path!r} must be {_TYPE_NAMES[kind]}")
    return node


def parse_event(event_name: str, payload: dict[str, Any]) -> Event | None:
    """The event mdc acts on in a delivery, or None for kinds it ignores (``ping``...).

    Reads only fields GitHub marks required and non-null in every action's schema,
    except ``issue.pull_request``, whose presence is what marks a PR comment.
    Raises :class:`ValueError` naming the field when one is missing or mistyped.
    """
    get = partial(_field, payload, event_name)
    if event_name == "push":
        return PushEvent(
            ref=get("ref", str),
            before=get("before", str),
            after=get("after", str),
            forced=get("forced", bool),
            repository=get("repository.full_name", str),
        )
    if event_name == "pull_request":
        return PullRequestEvent(
            action=get("action", str),
            number=get("number", int),
            head_sha=get("pull_request.head.sha", str),
            head_ref=get("pull_request.head.ref", str),
            base_ref=get("pull_request.base.ref", str),
            repository=get("repository.full_name", str),
            merged=get("pull_request", dict).get("merged") is True,
        )
    if event_name == "issue_comment":
        issue = get("issue", dict)
        return IssueCommentEvent(
            action=get("action", str),
            issue_number=get("issue.number", int),
            is_pull_request=isinstance(issue.get("pull_request"), dict),
            body=get("comment.body", str),
            user=get("sender.login", str),
            repository=get("repository.full_name", str),
        )
    return None


def load_secret(
    env_var: str = "MDC_WEBHOOK_SECRET", file: str | os.PathLike[str] | None = None
) -> bytes:
    """The webhook secret from ``file`` when given, else from ``env_var``, less one trailing
    newline. Empty or unset: :class:`PermanentError` ``WebhookSecretMissing``, naming
    where it looked, never what it found."""
    if file is not None:
        where = f"file {os.fspath(file)!r}"
        try:
            raw = Path(file).read_bytes()
        except OSError as exc:
            message = f"webhook secret {where} cannot be read: {exc.strerror}"
            raise PermanentError(message, reason=Reason.WEBHOOK_SECRET_MISSING) from None
    else:
        raw = os.environ.get(env_var, "").encode()
        where = f"environment variable {env_var}"
    if not (secret := raw.removesuffix(b"\n").removesuffix(b"\r")):
        message = f"no webhook secret: {where} is empty or unset"
        raise PermanentError(message, reason=Reason.WEBHOOK_SECRET_MISSING)
    return secret


def _too_deep(payload: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``payload`` (parsed JSON) nests arrays and objects deeper than ``limit``;
    walked without recursion."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY on every accepted socket
    timeout = READ_TIMEOUT
    server: _Server
    _html = False  # the answer being sent is an HTML page

    def send_response(self, code: int, message: str | None = None) -> None:
        self._html = False
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "content-type":
            self._html = value.split(";", maxsplit=1)[0].strip().lower() == "text/html"
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        """Every answer -- routes, webhooks, and the errors the standard library sends
        itself -- leaves with the security headers."""
        for keyword, value in SECURITY_HEADERS:
            super().send_header(keyword, value)
        super().send_header("Content-Security-Policy", CSP_HTML if self._html else CSP)
        super().end_headers()

    def do_POST(self) -> None:
        if not self._on_path():
            return
        hook = self.server.hook
        lengths = self.headers.get_all("Content-Length") or []
        if "Transfer-Encoding" in self.headers or not lengths:
            return self._reply(411, {"error": "a Content-Length is required"}, unread=True)
        if len(lengths) != 1 or not lengths[0].isdigit():
            return self._reply(400, {"error": "invalid Content-Length"}, unread=True)
        if (length := int(lengths[0])) > hook.max_body:
            return self._reply(413, {"error": f"body over {hook.max_body} bytes"}, unread=True)
        if len(body := self.rfile.read(length)) != length:
            self.close_connection = True  # the client hung up mid-body
            return None
        self._reply(*hook._answer(self.headers, body))

    def _not_allowed(self) -> None:
        if self._on_path():
            self._reply(405, {"error": "only POST is allowed"}, unread=True)

    def do_GET(self) -> None:
        route = self.server.hook.routes.get(urlsplit(self.path).path)
        if route is None:
            return self._not_allowed()
        try:
            status, content_type, data = route()
        except Exception:
            log.exception("GET %s failed", self.path)
            status, content_type, data = 500, "text/plain", b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return None

    do_HEAD = do_GET
    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed

    def _on_path(self) -> bool:
        hook = self.server.hook
        if not (found := urlsplit(self.path).path == hook.path and hook.accepts_webhooks):
            self._reply(404, {"error": "not found"}, unread=True)
        return found

    def _reply(self, status: int, doc: dict[str, object], *, unread: bool = False) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 405:
            self.send_header("Allow", "POST")
        if unread:  # the body was never read: the connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        if unread:
            self._linger()

    def _linger(self) -> None:
        """Half-close and discard (bounded) what the client still sends: closing with
        unread data would reset the connection and lose our answer."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            drained = 0
            while drained < _LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not (chunk := self.connection.recv(8192)):
                    break
                drained += len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hook: WebhookServer) -> None:
        self.hook, self.lock = hook, threading.Lock()
        self.connections: set[socket.socket] = set()  # so stop() can end kept-alive ones
        super().__init__((hook.host, hook.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)


class WebhookServer:
    """Serves ``http://host:port/path`` (IPv4) and calls ``on_event`` with each accepted
    event, on a server thread. ``port=0`` picks a free port (see :attr:`url`)."""

    def __init__(
        self,
        secret: bytes | None,
        on_event: Callable[[Event], None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/webhook",
        max_body: int = MAX_BODY,
        routes: Mapping[str, Route] | None = None,
        repository: str | None = None,
    ) -> None:
        if secret is not None and not secret:
            raise ValueError("the webhook secret must not be empty")
        #: ``secret=None``: no webhooks (the path answers 404), only the GET ``routes``
        self.accepts_webhooks = secret is not None
        self.routes: Mapping[str, Route] = routes or {}
        self._secret = secret or b""
        self.on_event = on_event
        self.host, self.port, self.path, self.max_body = host, port, path, max_body
        #: ``owner/name`` events must be about (GitHub compares them without case);
        #: None: any repository (``mdc watch``, which knows no GitHub repository)
        self.repository = repository
        self._seen, self._seen_lock = OrderedDict[str, None](), threading.Lock()  # oldest first
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never the secret
        return f"WebhookServer(host={self.host!r}, port={self.port}, path={self.path!r})"

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the webhook server is not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}{self.path}"

    def _answer(self, headers: Message, body: bytes) -> tuple[int, dict[str, object]]:
        """Status and JSON answer to a delivery whose body was read in full."""
        if not verify_signature(self._secret, body, headers.get("X-Hub-Signature-256")):
            return 401, {"error": "missing or invalid X-Hub-Signature-256"}
        event_name = headers.get("X-GitHub-Event")
        if not event_name:
            return 400, {"error": "missing X-GitHub-Event header"}
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("body is not a JSON object")
            if _too_deep(payload):
                raise RecursionError
            event = parse_event(event_name, payload)
        except json.JSONDecodeError as exc:
            return 400, {"error": f"body is not valid JSON: {exc}"}
        except RecursionError:
            return 400, {"error": f"body nests deeper than {MAX_DEPTH} levels"}
        except ValueError as exc:  # also an integer of too many digits
            return 400, {"error": str(exc)}
        if event_name == "ping":
            return 200, {"pong": True}
        if event is None:
            return 202, {"ignored": event_name}
        if self.repository is not None and event.repository.lower() != self.repository.lower():
            log.warning(
                "webhook %s delivery %s ignored: it is about %r, not %s",
                event_name,
                headers.get("X-GitHub-Delivery"),
                event.repository,
                self.repository,
            )
            return 202, {"ignored": event_name, "repository": event.repository}
        delivery = headers.get("X-GitHub-Delivery")
        with self._seen_lock:  # claimed before the call, so concurrent replays lose too
            if delivery in self._seen:
                return 200, {"duplicate": True}
            if delivery:
                self._seen[delivery] = None
                if len(self._seen) > DELIVERY_MEMORY:
                    self._seen.popitem(last=False)
        try:
            self.on_event(event)
        except Exception:
            log.exception("webhook handler failed on %s delivery %s", event_name, delivery)
            with self._seen_lock:  # GitHub's redelivery may try again
                self._seen.pop(delivery or "", None)
            return 500, {"error": "event handler failed"}
        return 202, {"accepted": event_name}

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("the webhook server is already started")
        self._httpd = _Server(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="mdc-webhook", daemon=True
        )
        self._thread.start()
        log.info("webhook server listening on %s", self.url)

    def stop(self) -> None:
        if self._httpd is None or self._thread is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._httpd.lock:
            for connection in self._httpd.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> WebhookServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
