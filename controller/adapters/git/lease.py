"""One writer per spec repository: a lease kept in the repository itself.

Owns the lease ref (default ``refs/mdc/lease/<release branch>``) on the spec
repository's remote, the small bare repository beside the source's mirror that
it is fetched into and written from, and the decision of whether *this*
controller may act. Two ``mdc run`` controllers pointed at the same remote and
release branch (different state directories, maybe different machines) never
both hold it. Called by the daemon from a background thread (:meth:`RepoLease.tick`
every second or so, :meth:`RepoLease.release` on a clean shutdown); everything
here blocks on git (see "Blocking" below).

The lease
    The ref's tip is a commit whose tree holds one file, ``lease.json``:
    ``{"version", "holder", "acquired", "renewed", "expires", "ttl", "nonce"}``
    (times are epoch seconds). A tick fetches the ref, then acquires it when it
    is absent, released, unreadable or expired, renews it when this controller
    holds it and ``ttl/3`` has passed since its last renewal, and otherwise only
    reports.

Compare-and-swap
    Every write replaces the tip that was just fetched (``expected``) and only
    that tip; a writer that finds another tip has lost and stands by. How the
    comparison is made:

    * smart transports (``git://``, ``http(s)://``, ``ssh://``): a push whose
      ``push_negotiation`` callback refuses when the remote's advertised value
      is not ``expected``; the update command then carries that value as the
      old id, and ``git receive-pack`` applies it under the ref's lock only if
      the ref still has it (the server side of ``--force-with-lease``). A
      rejection comes back through ``push_update_reference``.
    * ``file://`` and plain paths: libgit2's local transport does *not* compare
      (it force-writes the ref once the pack is in; measured: a competitor
      writing between the advertisement and the update is silently
      overwritten). So a local remote is written directly: objects into its
      object database, then ``Reference.set_target`` (libgit2 compares the old
      value under the ref's lock) or ``create(force=False)`` for a first lease.

    After a rejected write the ref is fetched again and whatever it says is
    reported. Two controllers therefore never both believe they hold the lease.

History
    Each write is a fresh root commit (no parent) pushed as a forced update, so
    the ref always reaches exactly one commit (about 400 bytes) and the old
    ones become garbage for the server's ``git gc``. This is as safe as a
    fast-forward chain because the comparison above does not depend on
    ancestry. A server that refuses forced updates of the ref (a hook, branch
    protection when ``ref`` is under ``refs/heads/``; ``receive.denyNonFastForwards``
    applies only to ``refs/heads/``) is detected (the write is rejected while
    the tip stays put) and the lease falls back, for this process, to a
    fast-forward chain (each write's parent is the fetched tip): still a
    compare-and-swap, but the history then grows by one tiny commit per
    renewal (``86400 / (ttl/3)`` a day: 17,280 with the default ttl). The local
    lease repository is rebuilt every few hundred operations so its packs do
    not pile up.

Clocks
    ``now`` is a parameter (epoch seconds). The writer records ``expires = now
    + ttl``; a reader compares that with its own ``now``. The holder stops
    counting itself as holder ``max_skew`` seconds (default ``ttl/5``) before
    the expiry it recorded; a standby takes over only after that expiry by its
    own clock. So the controllers' clocks may disagree by up to ``max_skew``
    without two writers (NTP keeps them within milliseconds).

Outages
    When git cannot be reached the tick reports ``error`` and the last known
    holder. The holder keeps ``held=True`` until ``max_skew`` before the expiry
    it last wrote, then stands down: a standby that *can* reach git (a
    partition, not an outage) takes over only after that expiry, so the two
    never overlap. During a longer outage nobody holds the lease (the data plane
    keeps serving; nobody changes it). Each call checks at the moment it is
    made; :meth:`RepoLease.holds` answers from memory, without I/O.

Blocking
    libgit2's timeouts are set process-wide by :class:`GitSource` (10 s to
    connect, 60 s for a stalled read or write). A tick is one fetch, plus a push
    and a second fetch when it writes (a second push and fetch once, when it
    finds out the server refuses forced updates). A failed fetch ends the tick:
    with the remote black-holed it returns after the connect timeout (10 s); a
    server that accepts and then stalls holds it for the read timeout (measured:
    60.1 s). A failed push is not followed by a fetch. :meth:`RepoLease.release`
    is one fetch and one push.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pygit2
from pygit2.enums import FileMode

from controller.adapters.git.source import GitSource
from controller.errors import Reason, TransientError

__all__ = [
    "LEASE_FILE",
    "LeaseRead",
    "LeaseRecord",
    "LeaseState",
    "RepoLease",
    "controller_identity",
    "lease_ref",
]

log = logging.getLogger(__name__)

#: The file in the lease commit's tree.
LEASE_FILE = "lease.json"
#: Local refs in the lease's own repository.
_SEEN = "refs/mdc/lease-seen"
_OUTGOING = "refs/mdc/lease-outgoing"
#: Rebuild the local lease repository after this many fetches and writes.
_REBUILD_AFTER = 256
_ZERO = "0" * 40


def lease_ref(branch: str) -> str:
    """The default lease ref for a release branch: ``refs/mdc/lease/BRANCH``."""
    return f"refs/mdc/lease/{branch}"


def controller_identity(state_dir: Path) -> str:
    """``host:pid:HASH``: who this controller is in the lease, HASH naming its state dir.

    Readable in logs, and unique per controller process (a restarted controller
    is a new holder: it waits for its predecessor's lease to expire unless that
    one was released)."""
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}:{os.getpid()}:{digest}"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LeaseState:
    """What one tick found out."""

    held: bool  # this controller holds the lease now
    holder: str  # the identity of whoever holds it ("" if nobody / expired)
    expires: float  # epoch seconds when the current holder's lease runs out (0 if none)
    error: str | None = None  # why the lease could not be read or written (transient)

    def describe(self) -> str:
        """One line for people: status output, /readyz, logs."""
        if self.held:
            line = f"held by me until {_when(self.expires)}"
            return f"{line}; cannot renew: {self.error}" if self.error else line
        if self.error:
            return f"lease unknown: {self.error}"
        if self.holder:
            return f"standing by: held by {self.holder} until {_when(self.expires)}"
        return "standing by: the lease is free"


@dataclass(frozen=True)
class LeaseRecord:
    """The content of ``lease.json``."""

    holder: str  # "" once released
    acquired: float
    renewed: float
    expires: float
    ttl: float
    nonce: str  # makes every write a new commit, even with equal times

    def to_json(self) -> bytes:
        body = {
            "version": 1,
            "holder": self.holder,
            "acquired": self.acquired,
            "renewed": self.renewed,
            "expires": self.expires,
            "ttl": self.ttl,
            "nonce": self.nonce,
        }
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> LeaseRecord:
        """Read ``lease.json``; ValueError when it is not a lease (unknown keys are ignored)."""
        body = json.loads(data.decode("utf-8"))
        if not isinstance(body, dict):
            raise ValueError("lease.json is not an object")
        holder = body.get("holder")
        if not isinstance(holder, str):
            raise ValueError("lease.json has no holder")

        def number(key: str) -> float:
            value = body.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"lease.json: {key} is not a number")
            if not math.isfinite(value):
                raise ValueError(f"lease.json: {key} is not finite")
            return float(value)

        nonce = body.get("nonce", "")
        return cls(
            holder,
            number("acquired"),
            number("renewed"),
            number("expires"),
            number("ttl"),
            nonce if isinstance(nonce, str) else "",
        )

    def live(self, now: float) -> bool:
        """Someone holds it at ``now`` (by the reader's clock)."""
        return bool(self.holder) and now < self.expires


@dataclass(frozen=True)
class LeaseRead:
    """The lease ref as one fetch found it."""

    tip: str | None  # the ref's commit, None when the ref does not exist
    record: LeaseRecord | None  # None: no ref, or its content is not a lease (counts as free)


class _Moved(Exception):
    """The remote's ref is not the tip the write was based on."""


class _LeaseCallbacks(pygit2.RemoteCallbacks):
    """The source's own callbacks (credentials handed out once, host checks),
    plus the lease's compare step and the push outcome for its ref."""

    def __init__(self, source: GitSource, ref: str, expected: str | None) -> None:
        super().__init__()
        self.inner = source.callbacks()
        self.ref = ref
        self.expected = expected
        self.rejected: str | None = None

    def certificate_check(self, certificate: Any, valid: bool, host: bytes | str) -> bool:
        return self.inner.certificate_check(certificate, valid, host)

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        return self.inner.credentials(url, username_from_url, allowed_types)

    def push_negotiation(self, updates: list[Any]) -> None:
        for update in updates:
            if update.dst_refname == self.ref:
                found = str(update.src)
                if (None if found == _ZERO else found) != self.expected:
                    raise _Moved(f"the lease moved to {found[:12]}")

    def push_update_reference(self, refname: str, message: str | None) -> None:
        if refname == self.ref and message is not None:
            self.rejected = message


class RepoLease:
    """The lease on one remote's release branch, as seen by one controller.

    One instance per controller (state directory) and branch. Thread-safe:
    :meth:`tick` and :meth:`release` run one at a time; :meth:`holds` and
    :attr:`last` never wait for git.
    """

    def __init__(
        self,
        source: GitSource,
        branch: str,
        identity: str,
        ttl: float = 15.0,
        *,
        max_skew: float | None = None,
        ref: str | None = None,
    ) -> None:
        if not identity or not identity.isprintable():
            raise ValueError(f"lease identity {identity!r} must be printable and not empty")
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl}")
        skew = ttl / 5 if max_skew is None else max_skew
        if not (0 <= skew < ttl * 2 / 3):
            raise ValueError(f"max_skew must be in [0, {ttl * 2 / 3:g}) for ttl {ttl:g}")
        self.ref = ref or lease_ref(branch)
        if not pygit2.reference_is_valid_name(self.ref):
            raise ValueError(f"lease ref {self.ref!r} is not a valid ref name")
        self.source = source
        self.branch = branch
        self.identity = identity
        self.ttl = float(ttl)
        self.max_skew = float(skew)
        self.renew_every = self.ttl / 3
        mirror = Path(source.repo.path)
        tag = hashlib.sha256(self.ref.encode()).hexdigest()[:8]
        self.path = mirror.parent / f"{mirror.name.removesuffix('.git')}.lease-{tag}.git"
        self._local = _local_path(source)
        self._roots = True  # write fresh roots (forced) until the server refuses them
        self._repo: pygit2.Repository | None = None
        self._churn = 0
        self._lock = threading.Lock()
        self._valid_until = 0.0  # the expiry this controller recorded and saw land
        self._released = False
        self._seen: LeaseRecord | None = None  # the last record read
        self._last = LeaseState(False, "", 0.0, "not read yet")

    # -- the daemon's calls ---------------------------------------------------

    @property
    def last(self) -> LeaseState:
        """The last answer of :meth:`tick` (or of :meth:`release`)."""
        return self._last

    def holds(self, now: float) -> bool:
        """Whether this controller may act at ``now``; no I/O (a tick may be blocked)."""
        return not self._released and now < self._valid_until - self.max_skew

    def tick(self, now: float) -> LeaseState:
        """Read the lease; acquire, renew or just report. Never raises for git trouble."""
        with self._lock:
            try:
                seen = self.read()
            except TransientError as exc:
                state = self._state(now, self._seen, exc.message)
            else:
                state = self.step(now, seen)
            self._note(state)
            return state

    def release(self, now: float | None = None) -> None:
        """Best effort on a clean shutdown: stop acting, then record the lease as
        released so a standby takes over at once. Later ticks only report."""
        with self._lock:
            self._released = True
            self._valid_until = 0.0
            when = time.time() if now is None else now
            error = None
            try:
                seen = self.read()
                if seen.record is not None and seen.record.holder == self.identity:
                    free = LeaseRecord("", 0.0, when, 0.0, self.ttl, secrets.token_hex(8))
                    refused = self._publish(free, seen.tip)
                    if refused is not None:
                        error = f"lease not released: {refused}"
            except TransientError as exc:
                error = f"lease not released: {exc.message}"
            if error:
                log.warning("%s", error)
            else:
                log.info("lease %s released by %s", self.ref, self.identity)
            self._last = LeaseState(False, "", 0.0, error)

    # -- the two halves of a tick (public for tests of racing writers) ---------

    def read(self) -> LeaseRead:
        """Fetch the lease ref; raises :class:`TransientError` when git cannot be reached."""
        repo = self._local_repo()
        old = repo.references.get(_SEEN)
        if old is not None:
            old.delete()  # a ref deleted on the remote must read as absent
        callbacks = _LeaseCallbacks(self.source, self.ref, None)
        try:
            repo.remotes.create_anonymous(self.source.remote.url).fetch(
                [f"+{self.ref}:{_SEEN}"], callbacks=callbacks
            )
        except Exception as exc:  # libgit2 errors and whatever a callback raised
            raise self._trouble("fetch", exc, callbacks) from None
        self._churn += 1
        found = repo.references.get(_SEEN)
        if found is None:
            self._seen = None
            return LeaseRead(None, None)
        tip = str(found.target)
        record = None
        try:
            commit = repo[tip]
            if not isinstance(commit, pygit2.Commit):
                raise ValueError(f"{self.ref} points at {tip}, not a commit")
            entry = commit.tree[LEASE_FILE]
            blob = repo[entry.id]
            if not isinstance(blob, pygit2.Blob):
                raise ValueError(f"{LEASE_FILE} is not a file")
            record = LeaseRecord.parse(blob.data)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            log.warning("%s at %s is not a lease (%s): counted as free", self.ref, tip[:12], exc)
        self._seen = record
        return LeaseRead(tip, record)

    def step(self, now: float, seen: LeaseRead) -> LeaseState:
        """Decide from ``seen`` and write if this controller should; never raises."""
        record = seen.record
        if self._released:
            return self._state(now, record)
        if record is not None and record.holder == self.identity and record.live(now):
            self._valid_until = record.expires
            if now - record.renewed < self.renew_every:
                return self._state(now, record)
            return self._write(now, seen, record.acquired)
        if record is not None and record.live(now):
            self._valid_until = 0.0
            return self._state(now, record)
        return self._write(now, seen, now)

    # -- writing ----------------------------------------------------------------

    def _write(self, now: float, seen: LeaseRead, acquired: float) -> LeaseState:
        record = LeaseRecord(
            self.identity, acquired, now, now + self.ttl, self.ttl, secrets.token_hex(8)
        )
        try:
            refused = self._publish(record, seen.tip)
        except TransientError as exc:
            # Whether it landed is unknown: keep what was known; the next tick reads it.
            return self._state(now, seen.record, exc.message)
        if refused is None:
            self._valid_until = record.expires
            self._seen = record
            return self._state(now, record)
        try:
            again = self.read()
        except TransientError as exc:
            return self._state(now, seen.record, exc.message)
        if again.tip == seen.tip:
            if self._roots and self._local is None:
                log.warning(
                    "the remote refused a forced update of %s (%s): writing the lease as a "
                    "fast-forward chain from now on (its history grows with each renewal)",
                    self.ref,
                    refused,
                )
                self._roots = False
                return self._write(now, again, acquired)
            return self._state(now, seen.record, f"lease write refused: {refused}")
        record_again = again.record
        if record_again is not None and record_again.holder == self.identity:
            self._valid_until = record_again.expires  # our write landed after all
        else:
            self._valid_until = 0.0
        return self._state(now, record_again)

    def _publish(self, record: LeaseRecord, expected: str | None) -> str | None:
        """Replace ``expected`` (None: no ref yet) by a commit of ``record``.

        Returns None when the remote took it, or why it did not (another writer
        moved the ref, or the remote refused); raises :class:`TransientError`
        when the remote could not be reached."""
        if self._local is not None:
            return self._publish_local(self._local, record, expected)
        repo = self._local_repo()
        try:
            commit = _lease_commit(repo, record, self.branch, None if self._roots else expected)
            repo.references.create(_OUTGOING, commit, force=True)
        except (pygit2.GitError, OSError) as exc:
            raise self._trouble("write", exc, None) from None
        self._churn += 1
        spec = f"{'+' if self._roots else ''}{_OUTGOING}:{self.ref}"
        callbacks = _LeaseCallbacks(self.source, self.ref, expected)
        try:
            repo.remotes.create_anonymous(self.source.remote.url).push([spec], callbacks=callbacks)
        except _Moved as exc:
            return str(exc)
        except Exception as exc:
            message = str(exc)
            if "non-fastforwardable" in message or "not present locally" in message:
                return message  # libgit2's own fast-forward check: the ref moved
            raise self._trouble("push", exc, callbacks) from None
        return callbacks.rejected

    def _publish_local(self, path: str, record: LeaseRecord, expected: str | None) -> str | None:
        """The compare-and-swap on a repository on this machine's disk."""
        try:
            remote = pygit2.Repository(path)
            commit = _lease_commit(remote, record, self.branch, None if self._roots else expected)
        except (pygit2.GitError, OSError) as exc:
            raise self._trouble("write", exc, None) from None
        try:
            current = remote.references.get(self.ref)
            if current is None:
                if expected is not None:
                    return "the lease was deleted"
                remote.references.create(self.ref, commit, force=False)
            elif str(current.target) != expected:
                return f"the lease moved to {str(current.target)[:12]}"
            else:
                # compares with the value read above, under the ref's lock
                current.set_target(commit, f"mdc lease: {record.holder or 'released'}")
        except (pygit2.GitError, OSError) as exc:
            return str(exc)  # another writer got there first (or holds the lock)
        return None

    # -- internals --------------------------------------------------------------

    def _state(
        self, now: float, record: LeaseRecord | None, error: str | None = None
    ) -> LeaseState:
        if self.holds(now):
            return LeaseState(True, self.identity, self._valid_until, error)
        if record is not None and record.live(now):
            return LeaseState(False, record.holder, record.expires, error)
        return LeaseState(False, "", 0.0, error)

    def _note(self, state: LeaseState) -> None:
        before = self._last
        if state.held and not before.held:
            log.info("lease %s acquired by %s", self.ref, self.identity)
        elif before.held and not state.held:
            log.warning("lease %s lost: %s", self.ref, state.describe())
        elif state.holder != before.holder and state.holder and not state.held:
            log.info("lease %s: %s", self.ref, state.describe())
        self._last = state

    def _local_repo(self) -> pygit2.Repository:
        """The lease's own bare repository (rebuilt now and then: only the tip matters)."""
        if self._repo is not None and self._churn < _REBUILD_AFTER:
            return self._repo
        try:
            if self._repo is not None:
                self._repo.free()
            shutil.rmtree(self.path, ignore_errors=True)
            self._repo = pygit2.init_repository(str(self.path), bare=True)
        except (pygit2.GitError, OSError) as exc:
            self._repo = None
            raise TransientError(
                f"cannot prepare the lease repository {self.path}: {exc}",
                reason=Reason.GIT_UNAVAILABLE,
            ) from None
        self._churn = 0
        return self._repo

    def _trouble(
        self, verb: str, exc: BaseException, callbacks: _LeaseCallbacks | None
    ) -> TransientError:
        display = self.source.remote.display
        host = callbacks.inner.untrusted_host if callbacks is not None else None
        if host is not None:
            message = (
                f"lease {verb} on {display} refused: the identity of {host} could not be verified"
            )
            return TransientError(message, reason=Reason.GIT_HOST_UNTRUSTED, retry_after=60)
        message = self.source.credentials.redact(f"lease {verb} on {display} failed: {exc}")
        return TransientError(message, reason=Reason.GIT_UNAVAILABLE)


def _local_path(source: GitSource) -> str | None:
    """The remote's directory when it is on this machine's disk, else None."""
    if source.remote.scheme != "file":
        return None
    url = source.remote.url
    return unquote(urlsplit(url).path) if url.startswith("file:") else url


def _lease_commit(
    repo: pygit2.Repository, record: LeaseRecord, branch: str, parent: str | None
) -> str:
    """A commit in ``repo`` whose tree is ``lease.json`` = ``record``."""
    index = pygit2.Index()
    index.add(pygit2.IndexEntry(LEASE_FILE, repo.create_blob(record.to_json()), FileMode.BLOB))
    tree = index.write_tree(repo)
    who = pygit2.Signature("mdc", "mdc@localhost", max(0, int(record.renewed)), 0)
    if record.holder:
        subject = f"lease {branch}: {record.holder} until {_when(record.expires)}"
    else:
        subject = f"lease {branch}: released"
    oid = repo.create_commit(None, who, who, subject + "\n", tree, [parent] if parent else [])
    return str(oid)
