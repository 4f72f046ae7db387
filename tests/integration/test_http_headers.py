"""Every HTTP answer of the controller carries the security headers: the dashboard,
the API, /metrics, the health checks, webhook deliveries, and every error -- those the
standard library's server sends itself included."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from controller.adapters.github.webhook import Route, WebhookServer
from controller.ui.dashboard import render_dashboard

SECRET = b"s3cret"


def broken() -> tuple[int, str, bytes]:
    raise RuntimeError("a route that fails")


ROUTES: dict[str, Route] = {
    "/": lambda: (200, "text/html; charset=utf-8", render_dashboard([], None, {}, 0.0).encode()),
    "/api/status": lambda: (200, "application/json", b'{"models": []}'),
    "/metrics": lambda: (200, "text/plain; version=0.0.4", b"mdc_up 1\n"),
    "/healthz": lambda: (200, "text/plain", b"ok\n"),
    "/broken": broken,  # answered 500
}
EXPECTED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@pytest.fixture(scope="module")
def server() -> Iterator[WebhookServer]:
    with WebhookServer(SECRET, lambda event: None, routes=ROUTES) as hooks:
        yield hooks


def base(server: WebhookServer) -> str:
    return server.url.rsplit("/", 1)[0]


def assert_safe(headers: httpx.Headers, *, html: bool) -> None:
    for name, value in EXPECTED.items():
        assert headers.get(name) == value, name
    csp = [part.strip() for part in headers["content-security-policy"].split(";")]
    assert csp[0] == "default-src 'none'"
    assert "frame-ancestors 'none'" in csp
    assert ("style-src 'unsafe-inline'" in csp) is html
    assert not any(part.startswith("script-src") for part in csp)


@pytest.mark.parametrize(
    ("method", "path", "status", "html"),
    [
        ("GET", "/", 200, True),
        ("HEAD", "/", 200, True),
        ("GET", "/api/status", 200, False),
        ("GET", "/metrics", 200, False),
        ("GET", "/healthz", 200, False),
        ("GET", "/broken", 500, False),
        ("GET", "/nowhere", 404, False),
        ("GET", "/webhook", 405, False),
        ("POST", "/webhook", 401, False),  # unsigned delivery
        ("POST", "/nowhere", 404, False),
    ],
)
def test_every_answer_carries_the_security_headers(
    server: WebhookServer, method: str, path: str, status: int, html: bool
) -> None:
    with httpx.Client(timeout=5, trust_env=False) as client:
        answer = client.request(
            method, base(server) + path, content=b"{}" if method == "POST" else None
        )
    assert answer.status_code == status
    assert_safe(answer.headers, html=html)


def test_errors_the_standard_library_sends_carry_them_too(server: WebhookServer) -> None:
    host, port = base(server).removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")  # an unknown method: 501
        data = b""
        while b"\r\n\r\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    assert head[0].split()[1] == "501"
    headers = httpx.Headers([(k, v) for k, _, v in (line.partition(": ") for line in head[1:])])
    assert_safe(headers, html=headers["content-type"].startswith("text/html"))
