"""Remote URLs and credentials: what is accepted, refused and never shown."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from controller.adapters.git.source import Credentials, parse_remote
from controller.core.backoff import backoff_delay
from controller.errors import PermanentError


@pytest.mark.parametrize(
    ("raw", "scheme", "url"),
    [
        ("https://github.com/acme/specs.git", "https", "https://github.com/acme/specs.git"),
        ("http://127.0.0.1:8080/specs.git", "http", "http://127.0.0.1:8080/specs.git"),
        ("git://127.0.0.1:9418/specs.git", "git", "git://127.0.0.1:9418/specs.git"),
        ("ssh://git@github.com/acme/specs.git", "ssh", "ssh://git@github.com/acme/specs.git"),
        ("ssh://git@host:2222/specs.git", "ssh", "ssh://git@host:2222/specs.git"),
        ("git@github.com:acme/specs.git", "ssh", "git@github.com:acme/specs.git"),
        ("file:///srv/git/specs.git", "file", "file:///srv/git/specs.git"),
        ("/srv/git/specs.git", "file", "/srv/git/specs.git"),
        ("https://user:s3cret@example.com/r.git", "https", "https://example.com/r.git"),
    ],
)
def test_accepted(raw: str, scheme: str, url: str) -> None:
    remote = parse_remote(raw)
    assert (remote.scheme, remote.url) == (scheme, url)
    assert "s3cret" not in remote.display


def test_relative_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_remote("specs.git").url == str(tmp_path / "specs.git")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("ext::sh%-c%touch%/tmp/pwned", "transport::"),
        ("ext::git-upload-pack", "transport::"),
        ("fd::3", "transport::"),
        ("-uhelp", "option"),
        ("--upload-pack=touch /tmp/x", "whitespace"),
        ("ssh://-oProxyCommand=calc/x", "option"),
        ("ssh://git@-host/x", "option"),
        ("ftp://example.com/x.git", "scheme"),
        ("https:///nohost.git", "no host"),
        ("file://otherhost/x.git", "local path"),
        ("https://example.com/a b.git", "whitespace"),
        ("https://example.com/a\nb.git", "whitespace"),
        ("", "empty"),
    ],
)
def test_refused(raw: str, why: str) -> None:
    with pytest.raises(PermanentError, match=why) as caught:
        parse_remote(raw)
    assert caught.value.reason == "BadRemoteURL"


def test_refusal_message_hides_url_credentials() -> None:
    with pytest.raises(PermanentError) as caught:
        parse_remote("ftp://bob:hunter2@example.com/x.git")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "username", "password"),
    [
        ({}, None, None),
        ({"MDC_GIT_TOKEN": "T0KEN"}, "x-access-token", "T0KEN"),
        ({"MDC_GIT_TOKEN": "T0KEN", "MDC_GIT_USERNAME": "bot"}, "bot", "T0KEN"),
        ({"MDC_GIT_USERNAME": "bob", "MDC_GIT_PASSWORD": "PASSW0RD"}, "bob", "PASSW0RD"),
    ],
)
def test_credentials_from_env(
    env: dict[str, str], username: str | None, password: str | None
) -> None:
    creds = Credentials.from_env(env)
    assert (creds.username, creds.password) == (username, password)
    assert "T0KEN" not in repr(creds)
    assert "PASSW0RD" not in repr(creds)


def test_credentials_from_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-file\n")
    assert Credentials.from_env({"MDC_GIT_TOKEN_FILE": str(token)}).password == "from-file"
    with pytest.raises(PermanentError, match="MDC_GIT_TOKEN_FILE") as caught:
        Credentials.from_env({"MDC_GIT_TOKEN_FILE": str(tmp_path / "missing")})
    assert caught.value.reason == "CredentialsUnreadable"


def test_redact() -> None:
    creds = Credentials("x-access-token", "ghp_secret123")
    text = "fetch https://x:ghp_secret123@h/r.git failed: token ghp_secret123 refused"
    assert creds.redact(text) == "fetch https://***@h/r.git failed: token *** refused"


def test_url_credentials_are_used_when_none_configured() -> None:
    remote = parse_remote("https://bot:abc@example.com/r.git")
    creds = Credentials().with_url(remote)
    assert (creds.username, creds.password) == ("bot", "abc")


@pytest.mark.parametrize(
    ("failures", "low", "high"),
    [(0, 0, 0), (1, 1, 2), (2, 2, 4), (3, 4, 8), (5, 16, 32), (9, 150, 300), (40, 150, 300)],
)
def test_backoff_is_exponential_capped_and_jittered(failures: int, low: float, high: float) -> None:
    rng = random.Random(1)
    delays = [backoff_delay(failures, base=2, cap=300, rng=rng) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    if failures:
        assert len({round(d, 6) for d in delays}) > 100  # jittered, not in lockstep
