"""The repository lease against real remotes: a ``git daemon`` (``git://``) and a
bare repository on disk (``file://``). Two controllers never both hold it:
acquire, stand by, renew, take over after expiry, racing writers (from the same
tip, and inside a push), release, outages, a server that refuses forced updates,
a deleted or unreadable lease. Time is passed in (``now``); nothing sleeps."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import pytest
from pygit2.enums import FileMode

from controller.adapters.git import lease as lease_module
from controller.adapters.git.lease import (
    LeaseRecord,
    LeaseState,
    RepoLease,
    controller_identity,
    lease_ref,
)
from controller.adapters.git.source import GitSource
from tests.gitservers import GitDaemon, free_port, make_bare_repo, missing_git_binaries, run_git

pytestmark = pytest.mark.integration

if missing_git_binaries():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI lacks {missing_git_binaries()}")
    pytest.skip(f"missing {missing_git_binaries()}", allow_module_level=True)

T0 = 1_700_000_000.0
TTL = 15.0
SKEW = TTL / 5
REF = lease_ref("main")


@dataclass
class Remote:
    """One spec repository as the controllers reach it, and ways to break it."""

    kind: str  # "git" or "file"
    url: str
    bare: Path
    daemon: GitDaemon

    def cut(self) -> None:
        """Make the remote unreachable."""
        if self.kind == "git":
            self.daemon.kill()
        else:
            self.bare.rename(self.bare.with_name("away.git"))

    def tip(self) -> str | None:
        found = run_git("-C", self.bare, "rev-parse", "--verify", "-q", REF, check=False)
        return found.stdout.strip() or None

    def history(self) -> int:
        return int(run_git("-C", self.bare, "rev-list", "--count", REF).stdout)


def make_remote(kind: str, daemon: GitDaemon) -> Remote:
    bare = daemon.base / "specs.git"
    url = daemon.url("specs") if kind == "git" else f"file://{bare}"
    return Remote(kind, url, bare, daemon)


@pytest.fixture(params=["git", "file"])
def remote(request: pytest.FixtureRequest, daemon: GitDaemon) -> Remote:
    return make_remote(request.param, daemon)


def controller(tmp_path: Path, url: str, name: str, **kw: Any) -> RepoLease:
    """A controller's lease: its own state directory, the same remote."""
    source = GitSource(url, "main", tmp_path / f"state-{name}")
    return RepoLease(source, "main", name, TTL, **kw)


def write_lease_file(bare: Path, data: bytes) -> None:
    """Someone other than mdc sets the lease ref to a commit holding ``data``."""
    repo = pygit2.Repository(str(bare))
    index = pygit2.Index()
    index.add(pygit2.IndexEntry("lease.json", repo.create_blob(data), FileMode.BLOB))
    who = pygit2.Signature("someone", "someone@example.invalid", int(T0), 0)
    commit = repo.create_commit(None, who, who, "by hand\n", index.write_tree(repo), [])
    repo.references.create(REF, commit, force=True)


# -- acquire, stand by, renew, take over ----------------------------------------


def test_first_acquires_and_second_stands_by(remote: Remote, tmp_path: Path) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    assert a.last.error == "not read yet"
    got = a.tick(T0)
    assert got == LeaseState(True, "ctl-a", T0 + TTL, None)
    assert a.last == got
    assert got.describe().startswith("held by me until 2023-11-14T22:13:")
    other = b.tick(T0 + 1)
    assert other == LeaseState(False, "ctl-a", T0 + TTL, None)
    assert other.describe().startswith("standing by: held by ctl-a until ")
    assert (a.holds(T0 + 1), b.holds(T0 + 1)) == (True, False)
    assert remote.history() == 1
    stored = json.loads(run_git("-C", remote.bare, "show", f"{REF}:lease.json").stdout)
    assert stored["holder"] == "ctl-a"
    assert (stored["renewed"], stored["expires"], stored["ttl"]) == (T0, T0 + TTL, TTL)


def test_holder_renews_after_a_third_of_the_ttl_and_standby_waits(
    remote: Remote, tmp_path: Path
) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    a.tick(T0)
    first = remote.tip()
    assert a.tick(T0 + 2).expires == T0 + TTL  # too early: only reports
    assert remote.tip() == first
    renewed = a.tick(T0 + 5)
    assert renewed == LeaseState(True, "ctl-a", T0 + 5 + TTL, None)
    assert remote.tip() != first
    # long after the first expiry, but the renewal holds
    assert b.tick(T0 + 16) == LeaseState(False, "ctl-a", T0 + 5 + TTL, None)
    again = a.tick(T0 + 10)
    assert again.expires == T0 + 10 + TTL
    assert b.tick(T0 + 24) == LeaseState(False, "ctl-a", T0 + 25, None)
    stored = json.loads(run_git("-C", remote.bare, "show", f"{REF}:lease.json").stdout)
    assert (stored["acquired"], stored["renewed"]) == (T0, T0 + 10)
    assert remote.history() == 1  # each write is a fresh root: the history stays one commit


def test_standby_takes_over_after_expiry_and_old_holder_steps_down(
    remote: Remote, tmp_path: Path
) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    a.tick(T0)  # ... and then a stops renewing
    assert not b.tick(T0 + TTL - 0.5).held
    assert not a.holds(T0 + TTL - SKEW)  # the holder stops acting max_skew early
    took = b.tick(T0 + TTL)
    assert took == LeaseState(True, "ctl-b", T0 + 2 * TTL, None)
    back = a.tick(T0 + TTL + 1)
    assert back == LeaseState(False, "ctl-b", T0 + 2 * TTL, None)
    assert not a.holds(T0 + TTL + 1)
    assert remote.history() == 1


# -- racing writers -------------------------------------------------------------


@pytest.mark.parametrize("before", ["free", "expired"])
def test_two_writers_from_the_same_tip_exactly_one_wins(
    remote: Remote, tmp_path: Path, before: str
) -> None:
    if before == "expired":
        controller(tmp_path, remote.url, "ctl-old").tick(T0 - 100)
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    seen_a, seen_b = a.read(), b.read()
    assert seen_a == seen_b
    first = a.step(T0, seen_a)
    second = b.step(T0, seen_b)
    assert (first.held, second.held) == (True, False)
    assert second.holder == "ctl-a"
    assert second.error is None
    assert (a.holds(T0 + 1), b.holds(T0 + 1)) == (True, False)
    assert b.tick(T0 + 1).holder == "ctl-a"


def test_two_ticks_at_the_same_moment(remote: Remote, tmp_path: Path) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    results = [a.tick(T0), b.tick(T0)]
    assert [r.held for r in results] == [True, False]
    assert {r.holder for r in results} == {"ctl-a"}


@pytest.mark.parametrize(
    ("kind", "moment"),
    [("git", "after-build"), ("file", "after-build"), ("git", "after-advertisement")],
)
def test_a_write_that_lands_inside_anothers_push_wins_alone(
    daemon: GitDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, moment: str
) -> None:
    """b writes between a's read and a's ref update: after a built its commit,
    or (git://) after the server advertised the old value to a's push. The
    server's own compare (or libgit2's, under the ref lock, on disk) refuses a."""
    remote = make_remote(kind, daemon)  # (a file:// lease is written without a push)
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    seen = a.read()
    fired: list[LeaseState] = []
    busy: list[bool] = []

    def competitor() -> None:
        if not busy:  # once, and not again from inside b's own write
            busy.append(True)
            fired.append(b.tick(T0))

    if moment == "after-build":
        build = lease_module._lease_commit

        def build_then_compete(*args: Any) -> str:
            commit = build(*args)
            competitor()
            return commit

        monkeypatch.setattr(lease_module, "_lease_commit", build_then_compete)
    else:
        negotiate = lease_module._LeaseCallbacks.push_negotiation

        def compete_then_negotiate(self: Any, updates: list[Any]) -> None:
            negotiate(self, updates)  # a's compare passes: nothing moved yet
            competitor()

        monkeypatch.setattr(
            lease_module._LeaseCallbacks, "push_negotiation", compete_then_negotiate
        )
    lost = a.step(T0, seen)
    assert fired[0].held
    assert lost == LeaseState(False, "ctl-b", T0 + TTL, None)
    monkeypatch.undo()
    assert b.tick(T0 + 1).held
    assert not a.tick(T0 + 1).held


# -- release, outages -----------------------------------------------------------


def test_release_hands_over_at_once(remote: Remote, tmp_path: Path) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    a.tick(T0)
    a.release(now=T0 + 1)
    assert a.last == LeaseState(False, "", 0.0, None)
    assert not a.holds(T0 + 1)
    took = b.tick(T0 + 1)
    assert took.held
    assert took.expires == T0 + 1 + TTL
    # a released controller never takes the lease again
    assert not a.tick(T0 + 100).held
    assert b.tick(T0 + 100).held


def test_release_of_a_lease_held_by_another_changes_nothing(remote: Remote, tmp_path: Path) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    a.tick(T0)
    tip = remote.tip()
    b.release(now=T0 + 1)
    assert remote.tip() == tip
    assert a.tick(T0 + 2).held


def test_unreachable_remote_is_an_error_never_an_exception(tmp_path: Path) -> None:
    lease = controller(tmp_path, f"git://127.0.0.1:{free_port()}/specs.git", "ctl-a")
    state = lease.tick(T0)
    assert not state.held
    assert state.error is not None
    assert "lease fetch on git://127.0.0.1:" in state.error
    assert state.describe() == f"lease unknown: {state.error}"
    lease.release(now=T0)  # best effort: no exception either
    assert lease.last.error is not None


def test_holder_keeps_acting_through_an_outage_until_its_expiry(
    remote: Remote, tmp_path: Path
) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    a.tick(T0)
    b.tick(T0 + 1)
    remote.cut()
    during = a.tick(T0 + 6)  # a renewal is due, and fails
    assert during.held
    assert during.expires == T0 + TTL
    assert during.error is not None
    assert "cannot renew" in during.describe()
    standby = b.tick(T0 + 6)
    assert (standby.held, standby.holder, standby.error is not None) == (False, "ctl-a", True)
    assert a.tick(T0 + TTL - SKEW - 0.1).held
    late = a.tick(T0 + TTL - SKEW)  # stands down before a standby may take over
    assert (late.held, late.error is not None) == (False, True)
    assert late.describe().startswith("lease unknown: ")
    assert not a.tick(T0 + 100).held
    assert not b.tick(T0 + 100).held  # nobody can write: nobody holds it


# -- what the remote allows and what it holds -------------------------------------


def test_a_remote_that_refuses_forced_updates_gets_a_fast_forward_chain(
    daemon: GitDaemon, tmp_path: Path
) -> None:
    """``receive.denyNonFastForwards`` covers refs/heads/ only: with the lease
    kept as a branch, the second write is refused as a forced update and the
    lease falls back to fast-forward writes, still one writer."""
    bare = make_bare_repo(daemon.base, "strict")
    run_git("-C", bare, "config", "receive.denyNonFastForwards", "true")
    ref = "refs/heads/mdc/lease/main"
    a = controller(tmp_path, daemon.url("strict"), "ctl-a", ref=ref)
    b = controller(tmp_path, daemon.url("strict"), "ctl-b", ref=ref)
    assert a.tick(T0).held
    renewed = a.tick(T0 + 5)
    assert renewed == LeaseState(True, "ctl-a", T0 + 5 + TTL, None)
    assert b.tick(T0 + 6) == LeaseState(False, "ctl-a", T0 + 5 + TTL, None)
    assert b.tick(T0 + 5 + TTL).held
    assert not a.tick(T0 + 5 + TTL).held
    count = run_git("-C", bare, "rev-list", "--count", ref).stdout
    assert int(count) == 3  # the first root, a's renewal, b's takeover


def test_a_remote_that_refuses_every_update_is_reported(daemon: GitDaemon, tmp_path: Path) -> None:
    bare = make_bare_repo(daemon.base, "locked")
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'no leases here' >&2\nexit 1\n")
    hook.chmod(0o755)
    lease = controller(tmp_path, daemon.url("locked"), "ctl-a")
    state = lease.tick(T0)
    assert not state.held
    assert state.error is not None
    assert state.error.startswith("lease write refused: ")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda bare: run_git("-C", bare, "update-ref", "-d", REF), id="deleted"),
        pytest.param(lambda bare: write_lease_file(bare, b"not json"), id="unreadable"),
        pytest.param(lambda bare: write_lease_file(bare, b'{"holder": 7}'), id="no-holder"),
    ],
)
def test_a_deleted_or_unreadable_lease_is_free(
    remote: Remote, tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    a.tick(T0)
    damage(remote.bare)
    took = b.tick(T0 + 1)
    assert took.held
    assert not a.tick(T0 + 2).held


def test_lease_lives_beside_the_release_branch_and_mirror(remote: Remote, tmp_path: Path) -> None:
    a = controller(tmp_path, remote.url, "ctl-a")
    a.tick(T0)
    heads = run_git("-C", remote.bare, "for-each-ref", "--format=%(refname)").stdout.split()
    assert heads == [REF]  # no branch: a plain clone does not fetch it
    mirror = Path(a.source.repo.path)
    assert a.path.parent == mirror.parent
    assert a.source.repo.references.get(REF) is None  # the spec mirror is left alone


def test_local_lease_repository_is_rebuilt_and_stays_small(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lease_module, "_REBUILD_AFTER", 4)
    a = controller(tmp_path, remote.url, "ctl-a")
    b = controller(tmp_path, remote.url, "ctl-b")
    for i in range(12):  # a renews every 5 s, b watches
        now = T0 + 5 * i
        assert a.tick(now).held
        assert b.tick(now + 1) == LeaseState(False, "ctl-a", now + TTL, None)
    packs = list((b.path / "objects" / "pack").glob("*.pack"))
    assert len(packs) <= 4
    assert remote.history() == 1


# -- pure parts -----------------------------------------------------------------


def test_controller_identity_is_readable_and_names_the_state_dir(tmp_path: Path) -> None:
    one = controller_identity(tmp_path / "one")
    host, pid, digest = one.split(":")
    assert (pid, len(digest)) == (str(os.getpid()), 8)
    assert host
    assert controller_identity(tmp_path / "one") == one
    assert controller_identity(tmp_path / "two") != one


@pytest.mark.parametrize(
    ("state", "line"),
    [
        (LeaseState(True, "me", T0, None), "held by me until 2023-11-14T22:13:20Z"),
        (
            LeaseState(True, "me", T0, "down"),
            "held by me until 2023-11-14T22:13:20Z; cannot renew: down",
        ),
        (
            LeaseState(False, "x:1:ab", T0, None),
            "standing by: held by x:1:ab until 2023-11-14T22:13:20Z",
        ),
        (LeaseState(False, "x:1:ab", T0, "down"), "lease unknown: down"),
        (LeaseState(False, "", 0.0, None), "standing by: the lease is free"),
    ],
)
def test_describe(state: LeaseState, line: str) -> None:
    assert state.describe() == line


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        (b'{"holder": "a", "expires": 5, "renewed": 1, "extra": true}', True),
        (b'{"holder": "a", "expires": "soon"}', False),
        (b'{"holder": "a", "expires": NaN}', False),
        (b'["a"]', False),
        (b"\xff", False),
    ],
)
def test_record_parsing(data: bytes, ok: bool) -> None:
    if ok:
        assert LeaseRecord.parse(data).expires == 5.0
    else:
        with pytest.raises(ValueError):  # noqa: PT011 (json, unicode and ours alike)
            LeaseRecord.parse(data)


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"identity": ""}, "identity"),
        ({"identity": "a\nb"}, "identity"),
        ({"ttl": 0.0}, "ttl"),
        ({"max_skew": TTL}, "max_skew"),
        ({"ref": "refs/mdc/lease/ma..in"}, "ref"),
    ],
)
def test_bad_arguments(tmp_path: Path, kw: dict[str, Any], why: str) -> None:
    source = GitSource(str(tmp_path / "none.git"), "main", tmp_path / "state")
    args: dict[str, Any] = {"identity": "ctl", "ttl": TTL, **kw}
    with pytest.raises(ValueError, match=why):
        RepoLease(source, "main", **args)


def test_moved_bare_repo_is_unreachable(remote: Remote, tmp_path: Path) -> None:
    """cut() itself, so the outage test above tests what it says."""
    lease = controller(tmp_path, remote.url, "ctl-a")
    remote.cut()
    assert lease.tick(T0).error is not None
    if remote.kind == "file":
        shutil.move(remote.bare.with_name("away.git"), remote.bare)
        assert lease.tick(T0).held
