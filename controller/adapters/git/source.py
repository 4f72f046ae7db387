"""Git as mdc's input: a bare mirror of the spec repository, fetched and read
without a checkout.

Owns remote URLs (which transports are allowed, how credentials are taken and
hidden), the local mirror in the state directory, fetching the release branch
with a force-aware refspec, :class:`GitTree` (a commit's tree behind the
:class:`~controller.spec.tree.Tree` protocol, so the spec loader reads blobs
straight from the object database), and :class:`SourcePoller`: the poll state
that keeps the last good snapshot through an outage, backs off with jitter,
reports force-pushes, and (with a :class:`~controller.adapters.git.signing.SigningPolicy`)
keeps the last verified snapshot when a new tip is unsigned or badly signed.

Credentials come from the environment or files (``MDC_GIT_*``, see
:meth:`Credentials.from_env`), or from the URL's user-info, which is stripped
before the URL reaches libgit2 and never shown: every message that leaves this
module goes through :meth:`Credentials.redact`.

Called by the controller's watch loop, ``mdc history`` and the status branch
writer (:mod:`controller.adapters.git.status_branch`), which shares the mirror.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pygit2
from pygit2.enums import CredentialType

from controller.adapters.git.signing import SigningMode, SigningPolicy, Verdict, verify_commit
from controller.core.backoff import backoff_delay
from controller.errors import PermanentError, Reason, TransientError, UnsafePath
from controller.spec.tree import MAX_BLOB_BYTES, MAX_TREE_DEPTH, MAX_TREE_ENTRIES, EntryKind

__all__ = [
    "Credentials",
    "GitSource",
    "GitTree",
    "PollResult",
    "RemoteURL",
    "Snapshot",
    "SourcePoller",
    "parse_remote",
]

log = logging.getLogger(__name__)

#: libgit2's limits for connecting to and hearing from a remote.
CONNECT_TIMEOUT_MS = 10_000
IO_TIMEOUT_MS = 60_000

_MODE_TREE = 0o040000
_MODE_LINK = 0o120000
_MODE_COMMIT = 0o160000  # a submodule
_SCP_LIKE = re.compile(
    r"^(?P<user>[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*|/.*)$"
)
_TRANSPORT_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]+(?<![/.])$")


@dataclass(frozen=True)
class RemoteURL:
    """A remote URL mdc accepts, split into what libgit2 gets and what people see."""

    url: str  # for libgit2: never carries credentials
    scheme: str  # file, git, http, https or ssh
    display: str  # for logs, status and errors
    username: str | None = None  # from the URL's user-info, if any
    password: str | None = field(default=None, repr=False)


def parse_remote(raw: str) -> RemoteURL:
    """Check and normalise a remote URL; raises :class:`PermanentError` (BadRemoteURL).

    Accepted: ``file://``, plain paths, ``git://``, ``http(s)://``, ``ssh://``
    and scp-like ``user@host:path``. Refused: ``ext::`` and every other
    ``transport::`` form, option-like parts (``-oProxyCommand``), whitespace
    and control characters.
    """

    def refuse(why: str) -> PermanentError:
        shown = _strip_userinfo(raw)
        return PermanentError(f"remote URL {shown!r} refused: {why}", reason=Reason.BAD_REMOTE_URL)

    if not raw or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in raw):
        raise refuse("empty, or contains whitespace or control characters")
    if _TRANSPORT_PREFIX.match(raw):
        raise refuse("'transport::' URLs (such as ext::) can run commands")
    if raw.startswith("-"):
        raise refuse("looks like a command-line option")
    if "://" in raw:
        parts = urlsplit(raw)
        scheme = parts.scheme.lower()
        if scheme not in ("file", "git", "http", "https", "ssh"):
            raise refuse(f"scheme {scheme!r} is not one of file, git, http, https, ssh")
        host = parts.hostname or ""
        if scheme != "file" and not host:
            raise refuse("no host")
        if host.startswith("-") or (parts.username or "").startswith("-"):
            raise refuse("host or user looks like a command-line option")
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise refuse("file:// URLs name a local path, not a host")
        netloc = host + (f":{parts.port}" if parts.port else "")
        if scheme == "ssh" and parts.username:
            netloc = f"{parts.username}@{netloc}"  # the ssh user is not a secret
        clean = urlunsplit((scheme, netloc, parts.path, parts.query, ""))
        secret_user = parts.username if scheme in ("http", "https") else None
        return RemoteURL(clean, scheme, clean, secret_user, parts.password)
    scp = _SCP_LIKE.match(raw)
    if scp and not raw.startswith(("/", ".")) and "/" not in scp.group("host"):
        if scp.group("host").startswith("-") or scp.group("path").startswith("-"):
            raise refuse("host or path looks like a command-line option")
        return RemoteURL(raw, "ssh", raw)
    path = Path(raw).expanduser().resolve()
    return RemoteURL(str(path), "file", str(path))


def _strip_userinfo(raw: str) -> str:
    return re.sub(r"(://)[^/@]*@", r"\1***@", raw)


@dataclass(frozen=True)
class Credentials:
    """How mdc authenticates to the remote. Secrets never appear in repr or logs."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)  # a token or a password
    ssh_key: Path | None = None
    ssh_passphrase: str | None = field(default=None, repr=False)
    ssh_known_hosts: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        """Read ``MDC_GIT_USERNAME``, ``MDC_GIT_TOKEN`` (or ``MDC_GIT_TOKEN_FILE``),
        ``MDC_GIT_PASSWORD`` (or ``_FILE``), ``MDC_GIT_SSH_KEY`` (a private key
        file; the public key is ``KEY.pub``), ``MDC_GIT_SSH_PASSPHRASE`` and
        ``MDC_GIT_SSH_KNOWN_HOSTS`` (the host keys to trust; without it, those
        in ``~/.ssh/known_hosts``).
        A token alone authenticates as ``x-access-token``, as GitHub expects.
        """
        env = os.environ if env is None else env

        def secret(name: str) -> str | None:
            if env.get(name):
                return env[name]
            file = env.get(name + "_FILE")
            if file:
                try:
                    return Path(file).read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    raise PermanentError(
                        f"cannot read {name}_FILE ({file}): {exc.strerror}",
                        reason=Reason.CREDENTIALS_UNREADABLE,
                    ) from exc
            return None

        token = secret("MDC_GIT_TOKEN")
        password = secret("MDC_GIT_PASSWORD") or token
        username = env.get("MDC_GIT_USERNAME") or ("x-access-token" if token else None)
        key = env.get("MDC_GIT_SSH_KEY")
        known = env.get("MDC_GIT_SSH_KNOWN_HOSTS")
        return cls(
            username,
            password,
            Path(key) if key else None,
            secret("MDC_GIT_SSH_PASSPHRASE"),
            Path(known) if known else None,
        )

    def with_url(self, remote: RemoteURL) -> Credentials:
        """These credentials, completed by the user-info the URL carried."""
        if remote.password and not self.password:
            return replace(self, username=remote.username, password=remote.password)
        return self

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in (self.password, self.ssh_passphrase):
            if secret:
                text = text.replace(secret, "***")
        return _strip_userinfo(text)


class _Callbacks(pygit2.RemoteCallbacks):
    """Hands out credentials once (a wrong one must fail fast, not be replayed
    15 times) and records what the remote said about each pushed ref."""

    def __init__(self, credentials: Credentials) -> None:
        super().__init__()
        self._creds = credentials
        self.asked = 0
        self.rejected: dict[str, str] = {}
        self.untrusted_host: str | None = None

    def certificate_check(self, certificate: Any, valid: bool, host: bytes | str) -> bool:
        """Trust only what libgit2 verified: a TLS chain, or an ssh host key
        found in known_hosts (pygit2 does not hand us the key itself)."""
        if not valid:
            self.untrusted_host = host.decode() if isinstance(host, bytes) else str(host)
        return bool(valid)

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        self.asked += 1
        if self.asked > 1:
            raise _AuthFailed("the remote refused mdc's credentials")
        creds = self._creds
        if allowed_types & CredentialType.USERPASS_PLAINTEXT and creds.password:
            return pygit2.UserPass(creds.username or "git", creds.password)
        if allowed_types & CredentialType.SSH_KEY and creds.ssh_key:
            user = username_from_url or creds.username or "git"
            pub = str(creds.ssh_key) + ".pub"
            return pygit2.Keypair(user, pub, str(creds.ssh_key), creds.ssh_passphrase or "")
        if allowed_types & CredentialType.USERNAME:
            return pygit2.Username(username_from_url or creds.username or "git")
        raise _AuthFailed("the remote wants credentials and none are configured")

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if message is not None:
            self.rejected[refname] = message


class _AuthFailed(Exception):
    pass


@dataclass(frozen=True)
class Snapshot:
    """One fetched state of the release branch."""

    branch: str
    commit: str
    tree: str
    fetched_at: float

    @property
    def revision(self) -> str:
        """``main@sha1:HEX``, the form status and logs use (as Flux does)."""
        return f"{self.branch}@sha1:{self.commit}"


class GitSource:
    """A bare mirror of one remote, in ``state_dir``, for one release branch."""

    def __init__(
        self,
        url: str,
        branch: str,
        state_dir: Path,
        credentials: Credentials | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not _BRANCH.match(branch):
            raise PermanentError(f"branch name {branch!r} is not valid", reason=Reason.BAD_BRANCH)
        self.remote = parse_remote(url)
        self.branch = branch
        self.credentials = (credentials or Credentials()).with_url(self.remote)
        self._clock = clock
        self._args = (url, branch, Path(state_dir), credentials, clock)
        _configure_libgit2(Path(state_dir), self.credentials)
        key = hashlib.sha256(self.remote.url.encode()).hexdigest()[:16]
        path = Path(state_dir) / "mirrors" / f"{key}.git"
        if (path / "HEAD").exists():
            self.repo = pygit2.Repository(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.repo = pygit2.init_repository(str(path), bare=True)

    def _now(self) -> float:
        return self._clock() if self._clock else time.time()

    def twin(self) -> GitSource:
        """Another source over the same mirror with its own libgit2 repository
        object, for another thread (libgit2 objects are not shared across threads)."""
        url, branch, state_dir, credentials, clock = self._args
        return GitSource(url, branch, state_dir, credentials, clock)

    def callbacks(self) -> _Callbacks:
        return _Callbacks(self.credentials)

    def remote_handle(self) -> pygit2.Remote:
        """An anonymous libgit2 remote for the URL (credentials go in callbacks)."""
        return self.repo.remotes.create_anonymous(self.remote.url)

    def fetch_refs(self, branches: list[str]) -> dict[str, str | None]:
        """Fetch ``branches`` (force-aware) and return each one's tip, None if absent."""
        specs = [f"+refs/heads/{b}:refs/remotes/origin/{b}" for b in branches]
        callbacks = self.callbacks()
        try:
            self.remote_handle().fetch(specs, callbacks=callbacks)
        except _AuthFailed as exc:
            raise TransientError(
                f"fetch from {self.remote.display} failed: {exc}",
                reason=Reason.GIT_AUTH_FAILED,
                retry_after=60,
            ) from None
        except (pygit2.GitError, OSError) as exc:
            if callbacks.untrusted_host is not None:
                raise TransientError(
                    f"fetch from {self.remote.display} refused: the identity of "
                    f"{callbacks.untrusted_host} could not be verified (for ssh, add its host "
                    "key to MDC_GIT_SSH_KNOWN_HOSTS or ~/.ssh/known_hosts)",
                    reason=Reason.GIT_HOST_UNTRUSTED,
                    retry_after=60,
                ) from None
            raise TransientError(
                self.credentials.redact(f"fetch from {self.remote.display} failed: {exc}"),
                reason=Reason.GIT_UNAVAILABLE,
            ) from None
        return {b: self.tip(f"refs/remotes/origin/{b}") for b in branches}

    def fetch_pull(self, number: int) -> str | None:
        """Fetch GitHub's ``refs/pull/NUMBER/head`` (a PR from a fork); its tip or None."""
        ref = f"refs/remotes/origin/pull/{int(number)}"
        try:
            self.remote_handle().fetch(
                [f"+refs/pull/{int(number)}/head:{ref}"], callbacks=self.callbacks()
            )
        except (pygit2.GitError, OSError, _AuthFailed) as exc:
            raise TransientError(
                self.credentials.redact(f"fetch of pull request {number} failed: {exc}"),
                reason=Reason.GIT_UNAVAILABLE,
            ) from None
        return self.tip(ref)

    def tip(self, ref: str) -> str | None:
        found = self.repo.references.get(ref)
        return str(found.resolve().target) if found is not None else None

    def fetch(self) -> Snapshot:
        """Fetch the release branch; raises :class:`TransientError` when it cannot."""
        tip = self.fetch_refs([self.branch])[self.branch]
        if tip is None:
            raise TransientError(
                f"branch {self.branch!r} does not exist on {self.remote.display}",
                reason=Reason.BRANCH_NOT_FOUND,
            )
        commit = self.repo.get(tip)
        if not isinstance(commit, pygit2.Commit):
            raise TransientError(
                f"{self.branch} points at {tip}, not a commit", reason=Reason.NOT_A_COMMIT
            )
        return Snapshot(self.branch, tip, str(commit.tree_id), self._now())

    def tree(self, snapshot: Snapshot) -> GitTree:
        return GitTree(self.repo, snapshot.tree)

    def has_commit(self, sha: str) -> bool:
        """Whether the mirror holds the commit ``sha``."""
        try:
            return isinstance(self.repo.get(sha), pygit2.Commit)
        except (ValueError, pygit2.GitError):
            return False

    def tree_at(self, sha: str) -> GitTree:
        """The tree of commit ``sha`` (KeyError: the mirror does not hold it)."""
        try:
            commit = self.repo.get(sha)
        except (ValueError, pygit2.GitError):
            commit = None
        if not isinstance(commit, pygit2.Commit):
            raise KeyError(sha)
        return GitTree(self.repo, str(commit.tree_id))

    def merge_base(self, one: str, other: str) -> str | None:
        """The best common ancestor of two commits, if they have one."""
        try:
            found = self.repo.merge_base(one, other)
        except (ValueError, pygit2.GitError):
            return None
        return str(found) if found is not None else None

    def is_descendant(self, new: str, old: str) -> bool:
        """Whether ``new`` contains ``old`` in its history (False: a force-push)."""
        if new == old:
            return True
        try:
            return bool(self.repo.descendant_of(new, old))
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def remember(self, name: str, commit: str) -> None:
        """Keep ``commit`` reachable under ``refs/mdc/NAME`` (survives restarts and gc)."""
        self.repo.references.create(f"refs/mdc/{name}", commit, force=True)

    def remembered(self, name: str) -> str | None:
        return self.tip(f"refs/mdc/{name}")


def _configure_libgit2(state_dir: Path, credentials: Credentials) -> None:
    """Process-wide libgit2 settings: timeouts, so a black-holed remote is an
    error rather than a hang, and, with ``ssh_known_hosts``, a home directory of
    mdc's own whose ``.ssh/known_hosts`` is that file (libgit2 checks ssh host
    keys against ``HOME/.ssh/known_hosts`` and nothing else)."""
    pygit2.settings.server_connect_timeout = CONNECT_TIMEOUT_MS
    pygit2.settings.server_timeout = IO_TIMEOUT_MS
    if credentials.ssh_known_hosts is not None:
        home = state_dir / "home"
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        data = Path(credentials.ssh_known_hosts).read_bytes()
        (home / ".ssh" / "known_hosts").write_bytes(data)
        pygit2.settings.homedir = str(home)


class GitTree:
    """A commit's tree behind the :class:`~controller.spec.tree.Tree` protocol."""

    def __init__(self, repo: pygit2.Repository, tree_id: str) -> None:
        self.repo = repo
        self.tree_id = tree_id
        self._entries: dict[str, tuple[int, str]] | None = None
        self._refused: list[tuple[str, str]] = []

    def entries(self) -> dict[str, tuple[int, str]]:
        """Every path in the tree -> (file mode, object id), directories included.

        Walked iteratively, at most :data:`MAX_TREE_DEPTH` directories deep and
        :data:`MAX_TREE_ENTRIES` entries in all; what is left out is named by
        :meth:`refusals`.
        """
        if self._entries is None:
            found: dict[str, tuple[int, str]] = {}
            stack: list[tuple[Any, str, int]] = [(self.repo[self.tree_id], "", 0)]
            while stack:
                tree, prefix, depth = stack.pop()
                for entry in tree:
                    path = prefix + entry.name
                    if len(found) >= MAX_TREE_ENTRIES:
                        self._refused.append(
                            (
                                path,
                                f"the tree has more than {MAX_TREE_ENTRIES} entries; "
                                "the rest is not read",
                            )
                        )
                        stack.clear()
                        break
                    found[path] = (entry.filemode, str(entry.id))
                    if entry.filemode == _MODE_TREE:
                        if depth + 1 >= MAX_TREE_DEPTH:
                            self._refused.append(
                                (path, f"nested deeper than {MAX_TREE_DEPTH} directories; not read")
                            )
                        else:
                            stack.append((self.repo[entry.id], path + "/", depth + 1))
            self._entries = found
        return self._entries

    def refusals(self) -> list[tuple[str, str]]:
        self.entries()
        return list(self._refused)

    def walk(self) -> Iterator[str]:
        yield from sorted(p for p, (mode, _) in self.entries().items() if mode != _MODE_TREE)

    def kind(self, path: str) -> EntryKind | None:
        entry = self.entries().get(path)
        if entry is None:
            return None
        mode = entry[0]
        if mode == _MODE_TREE:
            return EntryKind.DIR
        if mode == _MODE_LINK:
            return EntryKind.SYMLINK
        if mode == _MODE_COMMIT:
            return EntryKind.OTHER
        return EntryKind.FILE

    def _oid(self, path: str) -> str:
        entry = self.entries().get(path)
        if entry is None:
            raise FileNotFoundError(path)
        return entry[1]

    def size(self, path: str) -> int:
        """The blob's size, from its object header: the content is not inflated."""
        _, size = self.repo.odb.read_header(self._oid(path))
        return int(size)

    def read(self, path: str) -> bytes:
        """The blob's bytes; one over :data:`MAX_BLOB_BYTES` (by its header) is
        refused with :class:`~controller.errors.UnsafePath` before it is read."""
        size = self.size(path)
        if size > MAX_BLOB_BYTES:
            raise UnsafePath(f"{path} is {size} bytes, over the limit of {MAX_BLOB_BYTES} bytes")
        _, data = self.repo.odb.read(self._oid(path))
        return bytes(data)

    def readlink(self, path: str) -> str:
        return self.read(path).decode("utf-8", "replace")


@dataclass(frozen=True)
class PollResult:
    """What one poll of the remote found."""

    snapshot: Snapshot | None  # the last good snapshot (kept through outages)
    changed: bool  # a new commit since the last good poll
    forced: bool  # the new tip does not contain the previous one
    previous: str | None  # the previous tip, when changed
    error: TransientError | None  # why this poll failed, if it did
    failures: int  # polls failed in a row
    retry_in: float  # seconds until the next poll should run
    since_good: float | None  # seconds since the last good fetch
    refused: Verdict | None = None  # the new tip failed the signing policy

    @property
    def condition(self) -> str:
        """A one-line status condition for people and status files."""
        if self.refused is not None:
            return (
                f"{self.refused.reason}: {self.refused.message}; the last verified revision stays"
            )
        if self.error is None:
            return "Ready"
        since = "never" if self.since_good is None else f"{self.since_good:.0f}s ago"
        return (
            f"{self.error.reason}: {self.error.message} (last good fetch {since}; "
            f"{self.failures} failure(s) in a row, retrying in {self.retry_in:.0f}s)"
        )


class SourcePoller:
    """Polls a :class:`GitSource`, keeping the last good snapshot through outages.

    Never turns "cannot read git" into "nothing is desired": on a failure the
    previous snapshot stays in force and the error is reported as transient.
    """

    def __init__(
        self,
        source: GitSource,
        interval: float = 60.0,
        rng: random.Random | None = None,
        signing: SigningPolicy | None = None,
    ) -> None:
        self.source = source
        self.interval = interval
        self.rng = rng or random.Random()
        self.signing = signing or SigningPolicy(SigningMode.OFF)
        self.snapshot: Snapshot | None = None
        self.failures = 0
        self._last_tip = source.remembered(f"seen/{source.branch}")
        self._refused: tuple[str, Verdict] | None = None
        self._error: str | None = None  # the last poll's fault, while polls fail

    def poll(self, now: float) -> PollResult:
        try:
            snap = self.source.fetch()
        except TransientError as exc:
            self.failures += 1
            delay = backoff_delay(
                self.failures,
                base=min(2.0, self.interval),
                cap=max(300.0, self.interval),
                rng=self.rng,
            )
            since = None if self.snapshot is None else max(0.0, now - self.snapshot.fetched_at)
            if exc.message != self._error:  # once per distinct fault, not every poll
                log.warning("git poll failed (retried): %s", exc.message)
                self._error = exc.message
            return PollResult(self.snapshot, False, False, None, exc, self.failures, delay, since)
        if self._error is not None:
            log.warning("git poll works again")
            self._error = None
        self.failures = 0
        if self.signing.mode is not SigningMode.OFF and (
            self.snapshot is None or snap.commit != self.snapshot.commit
        ):
            if self._refused is not None and self._refused[0] == snap.commit:
                verdict = self._refused[1]  # the same tip: no need to run gpg again
            else:
                verdict = verify_commit(self.source.repo, snap.commit, self.signing)
            if not verdict.ok:
                self._refused = (snap.commit, verdict)
                log.warning("refusing %s: %s", snap.revision, verdict.message)
                since = None if self.snapshot is None else max(0.0, now - self.snapshot.fetched_at)
                return PollResult(
                    self.snapshot, False, False, None, None, 0, self.interval, since, verdict
                )
        previous = self._last_tip
        changed = previous != snap.commit
        forced = bool(changed and previous and not self.source.is_descendant(snap.commit, previous))
        if forced:
            log.warning(
                "force-push on %s: %s is not a descendant of %s",
                snap.branch,
                snap.commit[:12],
                (previous or "")[:12],
            )
        if changed:
            self.source.remember(f"seen/{snap.branch}", snap.commit)
            self._last_tip = snap.commit
        self.snapshot = snap
        return PollResult(
            snap, changed, forced, previous if changed else None, None, 0, self.interval, 0.0
        )
