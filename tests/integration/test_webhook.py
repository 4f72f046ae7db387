"""The webhook receiver: signatures, event parsing against GitHub's published payload
schemas, the burst-coalescing trigger, and the real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from controller.adapters.github.webhook import (
    IssueCommentEvent,
    PullRequestEvent,
    PushEvent,
    Trigger,
    WebhookServer,
    load_secret,
    parse_event,
    verify_signature,
)
from controller.errors import PermanentError
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SECRET = b"It's a Secret to Everybody"
SHA_A, SHA_B = "a" * 40, "b" * 40
# GitHub's own OpenAPI description, cut to the calls mdc makes (copied from shared/)
GITHUB_SPEC = ROOT / "tests" / "fixtures" / "github" / "github-rest-subset.json"


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# -- payloads: the fields mdc reads, shaped as GitHub sends them ---------------------------


def push_payload() -> dict[str, Any]:
    repo = {"full_name": "acme/specs"}
    return {
        "ref": "refs/heads/main",
        "before": SHA_A,
        "after": SHA_B,
        "forced": False,
        "repository": repo,
    }


def pr_payload(action: str = "opened") -> dict[str, Any]:
    pull = {
        "number": 7,
        "head": {"sha": SHA_B, "ref": "feature"},
        "base": {"sha": SHA_A, "ref": "main"},
    }
    return {
        "action": action,
        "number": 7,
        "pull_request": pull,
        "repository": {"full_name": "acme/specs"},
    }


def comment_payload(action: str = "created", *, on_pr: bool = True) -> dict[str, Any]:
    issue: dict[str, Any] = {"number": 7}
    if on_pr:
        issue["pull_request"] = {"url": "https://api.github.com/repos/acme/specs/pulls/7"}
    return {
        "action": action,
        "issue": issue,
        "comment": {"body": "/mdc promote", "user": {"login": "alice", "id": 1}},
        "sender": {"login": "alice", "id": 1},
        "repository": {"full_name": "acme/specs"},
    }


PUSH = PushEvent("refs/heads/main", SHA_A, SHA_B, False, "acme/specs")
PR = PullRequestEvent("opened", 7, SHA_B, "feature", "main", "acme/specs")
COMMENT = IssueCommentEvent("created", 7, True, "/mdc promote", "alice", "acme/specs")


# -- GitHub's schemas: OpenAPI 3.0 to JSON Schema, and the smallest valid payload ---------


@cache
def json_schemas() -> Any:
    return to_json_schema({"components": {"schemas": github_schemas()}})


@cache
def github_schemas() -> dict[str, Any]:
    return dict(json.loads(GITHUB_SPEC.read_text())["components"]["schemas"])


def to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` becomes an explicit null alternative."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif "type" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def validate(name: str, payload: dict[str, Any]) -> None:
    root = {"$ref": f"#/components/schemas/{name}", **json_schemas()}
    jsonschema.Draft4Validator(root).validate(payload)


def deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = github_schemas()[node["$ref"].rsplit("/", 1)[1]]
    return node


def minimal(node: dict[str, Any], nullable_ok: bool = True) -> Any:
    """The smallest instance: required fields only, null wherever null is allowed."""
    node = deref(node)
    if node.get("nullable") and nullable_ok:
        return None
    if "allOf" in node:  # required fields of every part, each meeting every part's rules
        parts = [deref(part) for part in node["allOf"]]
        if nullable_ok and all(part.get("nullable") for part in parts):
            return None
        if len(parts) == 1 or parts[0].get("type") != "object":
            return minimal(parts[0], nullable_ok=False)
        rules: dict[str, list[Any]] = {}
        for part in parts:
            for key, rule in part.get("properties", {}).items():
                rules.setdefault(key, []).append(rule)
        required = dict.fromkeys(key for part in parts for key in part.get("required", []))
        return {key: minimal({"allOf": rules.get(key, [{}])}) for key in required}
    for key in ("oneOf", "anyOf"):
        if key in node:
            return minimal(node[key][0])
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        return {key: minimal(props.get(key, {})) for key in node.get("required", [])}
    if kind == "array":
        return [minimal(node["items"])] * node.get("minItems", 0)
    if kind == "string":
        formats = {"date-time": "2025-01-01T00:00:00Z", "uri": "https://example.invalid/"}
        return formats.get(node.get("format", ""), "x")
    return {"integer": 1, "number": 1, "boolean": False}.get(kind or "", "x")


def merged(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in over.items()}}
    return over


def schema_names(prefix: str) -> list[str]:
    if not GITHUB_SPEC.is_file():
        return [f"{prefix}(spec absent)"]
    return sorted(name for name in github_schemas() if name.startswith(prefix))


EVENT_OF = {"webhook-push": "push", "webhook-pull-request": "pull_request"}
EVENT_OF["webhook-issue-comment"] = "issue_comment"
ALL_SCHEMAS = [name for prefix in EVENT_OF for name in schema_names(prefix)]


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_smallest_payload_github_allows_parses(name: str) -> None:
    """parse_event reads only fields every action's schema requires and never nulls."""
    payload = minimal(github_schemas()[name])
    validate(name, payload)
    event_name = next(event for prefix, event in EVENT_OF.items() if name.startswith(prefix))
    event = parse_event(event_name, payload)
    assert type(event) is {"push": PushEvent, "pull_request": PullRequestEvent}.get(
        event_name, IssueCommentEvent
    )
    assert not isinstance(event, IssueCommentEvent) or not event.is_pull_request


@pytest.mark.parametrize(
    ("schema", "event_name", "payload", "expected"),
    [
        ("webhook-push", "push", push_payload(), PUSH),
        ("webhook-pull-request-opened", "pull_request", pr_payload(), PR),
        (
            "webhook-pull-request-synchronize",
            "pull_request",
            pr_payload("synchronize"),
            PullRequestEvent("synchronize", 7, SHA_B, "feature", "main", "acme/specs"),
        ),
        ("webhook-issue-comment-created", "issue_comment", comment_payload(), COMMENT),
        (
            "webhook-issue-comment-edited",
            "issue_comment",
            comment_payload("edited", on_pr=False),
            IssueCommentEvent("edited", 7, False, "/mdc promote", "alice", "acme/specs"),
        ),
    ],
)
def test_test_payloads_conform_and_parse(
    schema: str, event_name: str, payload: dict[str, Any], expected: object
) -> None:
    assert parse_event(event_name, payload) == expected
    full = merged(minimal(github_schemas()[schema]), payload)
    validate(schema, full)
    assert parse_event(event_name, full) == expected


# -- parse_event ---------------------------------------------------------------------------


def without(payload: dict[str, Any], path: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(payload))
    *parents, last = path.split(".")
    node = copy
    for key in parents:
        node = node[key]
    del node[last]
    return copy


@pytest.mark.parametrize(
    ("event_name", "payload", "message"),
    [
        ("push", without(push_payload(), "after"), "push payload lacks the field 'after'"),
        ("push", without(push_payload(), "repository.full_name"), "'repository.full_name'"),
        ("push", {**push_payload(), "forced": "no"}, "'forced' must be a boolean"),
        (
            "push",
            {**push_payload(), "repository": "acme/specs"},
            "lacks the field 'repository.full",
        ),
        ("pull_request", without(pr_payload(), "pull_request.head.sha"), "'pull_request.head.sha'"),
        ("pull_request", {**pr_payload(), "number": True}, "'number' must be an integer"),
        ("pull_request", {**pr_payload(), "number": "7"}, "'number' must be an integer"),
        ("issue_comment", without(comment_payload(), "sender"), "lacks the field 'sender.login'"),
        ("issue_comment", {**comment_payload(), "issue": []}, "'issue' must be an object"),
        ("issue_comment", without(comment_payload(), "comment.body"), "'comment.body'"),
    ],
)
def test_parse_event_names_the_bad_field(event_name: str, payload: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_event(event_name, payload)


@pytest.mark.parametrize("event_name", ["ping", "issues", "check_run", "release", ""])
def test_parse_event_ignores_other_kinds(event_name: str) -> None:
    assert parse_event(event_name, push_payload()) is None


def test_push_deleting_a_ref_is_marked() -> None:
    assert PushEvent("refs/heads/x", SHA_A, "0" * 40, False, "a/b").deleted
    assert not PUSH.deleted


# -- verify_signature, load_secret, Trigger ------------------------------------------------

BODY = b'{"zen": "Keep it logically awesome."}'


@pytest.mark.parametrize(
    ("secret", "body", "header", "ok"),
    [
        (SECRET, BODY, sign(BODY), True),
        (SECRET, BODY, "sha256=" + sign(BODY)[7:].upper(), True),
        (b"another secret", BODY, sign(BODY), False),
        (SECRET, BODY + b" ", sign(BODY), False),
        (SECRET, BODY, sign(BODY)[7:], False),
        (SECRET, BODY, "sha1=" + hmac.new(SECRET, BODY, "sha1").hexdigest(), False),
        (SECRET, BODY, "SHA256=" + sign(BODY)[7:], False),
        (SECRET, BODY, " " + sign(BODY), False),
        (SECRET, BODY, sign(BODY)[:-2], False),
        (SECRET, BODY, "sha256=" + "g" * 64, False),
        (SECRET, BODY, "sha256=" + "é" * 64, False),
        (SECRET, BODY, "", False),
        (SECRET, BODY, None, False),
        (b"", BODY, sign(BODY, b""), False),
    ],
)
def test_verify_signature(secret: bytes, body: bytes, header: str | None, ok: bool) -> None:
    assert verify_signature(secret, body, header) is ok


@pytest.mark.parametrize(
    ("env", "content", "expected"),
    [
        ("s3cret", None, b"s3cret"),
        (None, b"s3cret\n", b"s3cret"),
        (None, b"s3cret\r\n", b"s3cret"),
        (None, b" s3cret \n\n", b" s3cret \n"),
        ("from-env", b"from-file", b"from-file"),
    ],
)
def test_load_secret(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    env: str | None,
    content: bytes | None,
    expected: bytes,
) -> None:
    monkeypatch.delenv("MDC_WEBHOOK_SECRET", raising=False)
    if env is not None:
        monkeypatch.setenv("MDC_WEBHOOK_SECRET", env)
    file = None
    if content is not None:
        file = tmp_path / "secret"
        file.write_bytes(content)
    assert load_secret(file=file) == expected


@pytest.mark.parametrize("case", ["unset", "empty env", "missing file", "empty file"])
def test_load_secret_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str) -> None:
    monkeypatch.setenv("MDC_WEBHOOK_SECRET", "\n" if case == "empty env" else "s3cret")
    (tmp_path / "empty").write_bytes(b"\n")
    file = {"missing file": tmp_path / "nope", "empty file": tmp_path / "empty"}.get(case)
    env_var = "MDC_TEST_UNSET_SECRET" if case == "unset" else "MDC_WEBHOOK_SECRET"
    with pytest.raises(PermanentError) as caught:
        load_secret(env_var, file)
    assert caught.value.reason == "WebhookSecretMissing"
    assert "s3cret" not in str(caught.value)


def test_trigger_coalesces_fires_from_many_threads() -> None:
    trigger = Trigger()
    assert trigger.wait(0.01) is False
    threads = [threading.Thread(target=trigger.fire) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (trigger.wait(1), trigger.wait(0.01), trigger.fired) == (True, False, 8)
    threading.Timer(0.05, trigger.fire).start()  # a fire while waiting wakes the waiter
    assert trigger.wait(2) is True


# -- the server ----------------------------------------------------------------------------

Serve = Callable[..., tuple[WebhookServer, list[object]]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a real server; ``on_event`` defaults to recording the events it gets."""
    with ExitStack() as stack:

        def start(on_event: Callable[[object], None] | None = None, **options: Any) -> Any:
            received: list[object] = []
            server = WebhookServer(SECRET, on_event or received.append, **options)
            stack.enter_context(server)
            return server, received

        yield start


def new_client() -> httpx.Client:
    # plain http on loopback: no proxies from the environment, no TLS context to build
    return httpx.Client(timeout=5, trust_env=False, verify=False)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with new_client() as http:
        yield http


def deliver(
    client: httpx.Client, url: str, payload: Any, event: str | None = "push", **headers: str | None
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sent = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
    if event is not None:
        sent["X-GitHub-Event"] = event
    sent.update({key.replace("_", "-"): value or "" for key, value in headers.items()})
    return client.post(url, content=body, headers={k: v for k, v in sent.items() if v})


NO = None  # a header value of None: the header is not sent at all

DELIVERIES: list[tuple[str | None, Any, dict[str, str | None], int, str, list[object]]] = [
    ("push", push_payload(), {}, 202, '{"accepted": "push"}', [PUSH]),
    ("pull_request", pr_payload(), {}, 202, '{"accepted": "pull_request"}', [PR]),
    ("issue_comment", comment_payload(), {}, 202, '{"accepted": "issue_comment"}', [COMMENT]),
    ("ping", {"zen": "Design for failure.", "hook_id": 1}, {}, 200, '{"pong": true}', []),
    ("issues", {"action": "opened"}, {}, 202, '{"ignored": "issues"}', []),
    ("push", push_payload(), {"X_Hub_Signature_256": sign(b"{}")}, 401, "invalid X-Hub", []),
    ("push", push_payload(), {"X_Hub_Signature_256": NO}, 401, "missing or invalid", []),
    ("ping", {}, {"X_Hub_Signature_256": NO}, 401, "X-Hub-Signature-256", []),
    ("push", b'{"ref": ', {}, 400, "body is not valid JSON: Expecting value", []),
    ("push", b'{"ref": "\xff"}', {}, 400, "can't decode byte 0xff", []),
    ("push", b"[1, 2]", {}, 400, "body is not a JSON object", []),
    (None, push_payload(), {}, 400, "missing X-GitHub-Event header", []),
    ("push", without(push_payload(), "ref"), {}, 400, "push payload lacks the field 'ref'", []),
    ("push", {**push_payload(), "ref": 5}, {}, 400, "field 'ref' must be a string", []),
    ("pull_request", without(pr_payload(), "pull_request.head"), {}, 400, "'pull_request.head", []),
]


@pytest.mark.parametrize(("event", "payload", "headers", "status", "answer", "calls"), DELIVERIES)
def test_delivery_answers(
    serve: Serve,
    client: httpx.Client,
    event: str | None,
    payload: Any,
    headers: dict[str, str | None],
    status: int,
    answer: str,
    calls: list[object],
) -> None:
    server, received = serve()
    response = deliver(client, server.url, payload, event, **headers)
    assert (response.status_code, response.headers["content-type"]) == (status, "application/json")
    assert answer in response.text
    assert received == calls


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/webhook", 405),
        ("PUT", "/webhook", 405),
        ("HEAD", "/webhook", 405),
        ("POST", "/hook", 404),
        ("GET", "/", 404),
    ],
)
def test_wrong_method_or_path(
    serve: Serve, client: httpx.Client, method: str, path: str, status: int
) -> None:
    server, received = serve()
    body = json.dumps(push_payload()).encode()
    url = server.url.removesuffix("/webhook") + path
    headers = {"X-Hub-Signature-256": sign(body), "X-GitHub-Event": "push"}
    response = client.request(
        method, url, content=body if method != "HEAD" else None, headers=headers
    )
    assert response.status_code == status
    assert received == []
    if status == 405:
        assert response.headers["allow"] == "POST"


def test_replays_are_refused_or_deduplicated(serve: Serve, client: httpx.Client) -> None:
    server, received = serve()
    body = json.dumps(push_payload()).encode()
    assert deliver(client, server.url, body, X_GitHub_Delivery="d-1").status_code == 202
    # the same bytes under another signature: refused before anything else
    forged = deliver(
        client, server.url, body, X_GitHub_Delivery="d-2", X_Hub_Signature_256=sign(body, b"guess")
    )
    assert forged.status_code == 401
    # GitHub's redelivery: same id, valid signature -> answered, not acted on again
    again = deliver(client, server.url, body, X_GitHub_Delivery="d-1")
    assert (again.status_code, again.json()) == (200, {"duplicate": True})
    # a new delivery of an identical payload is a new event
    assert deliver(client, server.url, body, X_GitHub_Delivery="d-3").status_code == 202
    assert received == [PUSH, PUSH]


def test_delivery_memory_is_bounded(
    serve: Serve, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("controller.adapters.github.webhook.DELIVERY_MEMORY", 3)
    server, received = serve()
    statuses = [
        deliver(client, server.url, push_payload(), X_GitHub_Delivery=delivery).status_code
        for delivery in ["d-0", "d-1", "d-2", "d-3", "d-3", "d-0"]
    ]
    assert statuses == [202, 202, 202, 202, 200, 202]  # d-0 was forgotten, d-3 was not
    assert len(received) == 5


def test_concurrent_redeliveries_call_once(serve: Serve) -> None:
    calls: list[object] = []

    def slow(event: object) -> None:
        time.sleep(0.1)
        calls.append(event)

    server, _ = serve(slow)
    statuses: list[int] = []

    def one() -> None:
        with new_client() as http:
            statuses.append(
                deliver(http, server.url, push_payload(), X_GitHub_Delivery="same").status_code
            )

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 5 + [202]
    assert calls == [PUSH]


def test_oversized_body_is_refused_from_its_length(serve: Serve, client: httpx.Client) -> None:
    server, received = serve(max_body=1024)
    body = json.dumps({**push_payload(), "pad": "x" * 4096}).encode()
    response = deliver(client, server.url, body)
    assert (response.status_code, response.headers["connection"]) == (413, "close")
    assert deliver(client, server.url, push_payload()).status_code == 202  # on a new connection
    assert received == [PUSH]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        # claims 10 MiB and sends a few bytes: answered at once, nothing more is awaited
        (b"Content-Length: 10485760\r\nX-Hub-Signature-256: sha256=00\r\n\r\n{{{", b"413"),
        (b"X-GitHub-Event: push\r\n\r\n", b"411"),
        (b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", b"400"),
        (b"Content-Length: -1\r\n\r\n", b"400"),
    ],
)
def test_length_is_checked_before_reading(serve: Serve, head: bytes, status: bytes) -> None:
    server, received = serve()
    host, port = server.url.removeprefix("http://").split("/")[0].split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: mdc\r\n" + head)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.split(b" ")[1] == status
    assert time.monotonic() - started < 1
    assert received == []


def test_chunked_body_is_refused(serve: Serve, client: httpx.Client) -> None:
    server, _ = serve()
    response = client.post(server.url, content=iter([b"{}"]), headers={"X-GitHub-Event": "push"})
    assert response.status_code == 411


def test_failing_handler_gets_500_and_the_server_lives_on(
    serve: Serve, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[object] = []

    def flaky(event: object) -> None:
        calls.append(event)
        if len(calls) == 1:
            raise RuntimeError("boom")

    server, _ = serve(flaky)
    with caplog.at_level(logging.ERROR, logger="controller.adapters.github.webhook"):
        failed = deliver(client, server.url, push_payload(), X_GitHub_Delivery="d-1")
    assert failed.status_code == 500
    [record] = caplog.records
    assert record.exc_info is not None
    assert "boom" in str(record.exc_info[1])
    # the next request, and GitHub's redelivery of the failed one, are both handled
    assert deliver(client, server.url, push_payload(), X_GitHub_Delivery="d-1").status_code == 202
    assert calls == [PUSH, PUSH]


def test_burst_of_pushes_wakes_the_loop_once(serve: Serve, client: httpx.Client) -> None:
    trigger = Trigger()
    server, _ = serve(lambda event: trigger.fire())
    answers = [
        deliver(client, server.url, push_payload(), X_GitHub_Delivery=f"b-{n}") for n in range(20)
    ]
    assert [answer.status_code for answer in answers] == [202] * 20
    assert trigger.fired == 20
    assert trigger.wait(1) is True
    assert trigger.wait(0.05) is False


def test_kept_alive_requests_are_fast(serve: Serve, client: httpx.Client) -> None:
    """Without TCP_NODELAY each answer on a kept-alive connection waits ~40 ms (Nagle)."""
    server, _ = serve()
    deliver(client, server.url, push_payload())
    took = []
    for _ in range(20):
        started = time.perf_counter()
        assert deliver(client, server.url, push_payload()).status_code == 202
        took.append(time.perf_counter() - started)
    assert statistics.median(took) < 0.02


def test_secret_is_never_logged(
    serve: Serve, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, _ = serve()
    deliver(client, server.url, push_payload())
    deliver(client, server.url, push_payload(), X_Hub_Signature_256="sha256=" + "0" * 64)
    client.get(server.url)
    assert caplog.records
    assert SECRET.decode() not in caplog.text + repr(server)


def test_lifecycle(client: httpx.Client) -> None:
    server = WebhookServer(SECRET, lambda event: None, path="/hooks/github")
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    with server:
        url = server.url
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/hooks/github")
        assert deliver(client, url, {"zen": "hi"}, "ping").status_code == 200
    server.stop()  # twice is harmless
    with pytest.raises(httpx.ConnectError):
        client.post(url, content=b"{}")
    with pytest.raises(ValueError, match="empty"):
        WebhookServer(b"", lambda event: None)


# -- forge checks: another repository, deep or huge bodies ---------------------------------


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("pull_request", pr_payload()),
        ("push", push_payload()),
        ("issue_comment", comment_payload()),
    ],
)
def test_events_about_another_repository_are_ignored_with_a_log_line(
    serve: Serve,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    event: str,
    payload: dict[str, Any],
) -> None:
    server, received = serve(repository="ACME/Specs")  # GitHub compares names without case
    assert deliver(client, server.url, payload, event).status_code == 202
    assert len(received) == 1
    foreign = {**payload, "repository": {"full_name": "mallory/specs"}}
    caplog.set_level(logging.WARNING)
    answer = deliver(client, server.url, foreign, event)
    assert answer.status_code == 202
    assert answer.json() == {"ignored": event, "repository": "mallory/specs"}
    assert len(received) == 1
    assert "'mallory/specs', not ACME/Specs" in caplog.text


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "deeper than 64"),  # the parser's limit
        (b'{"a":' * 65 + b"1" + b"}" * 65, "deeper than 64"),  # under it, over ours
        (b'{"zen": ' + b"[" * 80 + b"]" * 80 + b"}", "deeper than 64"),  # arrays count too
        (b'{"n": ' + b"9" * 5000 + b"}", "digits"),  # an integer too big to read
    ],
)
def test_deep_or_huge_json_is_answered_400(
    serve: Serve, client: httpx.Client, body: bytes, error: str
) -> None:
    server, received = serve(max_body=1 << 21)
    answer = deliver(client, server.url, body, "push")
    assert answer.status_code == 400
    assert error in answer.json()["error"]
    assert received == []
    assert deliver(client, server.url, push_payload()).status_code == 202  # and it lives on
