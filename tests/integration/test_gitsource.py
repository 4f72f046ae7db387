"""The git side against real servers: fetch over each transport, force-push,
outage and recovery, racing status writers, pushes retried later, history."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from controller.adapters.git.history import model_history
from controller.adapters.git.signing import SigningMode, SigningPolicy
from controller.adapters.git.source import Credentials, GitSource, SourcePoller
from controller.adapters.git.status_branch import StatusBranch
from controller.errors import TransientError
from controller.spec.loader import ParseCache, load_desired
from controller.spec.tree import DirTree
from tests.conftest import EXAMPLE_REPO
from tests.gitservers import (
    GitDaemon,
    GitHttpServer,
    SshServer,
    make_bare_repo,
    missing_git_binaries,
    run_git,
)

pytestmark = pytest.mark.integration

if missing_git_binaries():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI lacks {missing_git_binaries()}")
    pytest.skip(f"missing {missing_git_binaries()}", allow_module_level=True)


def push_example(url: str, work: Path, message: str = "add specs") -> str:
    """Clone ``url``, lay the example repo in it, commit and push; returns the sha."""
    run_git("clone", "-q", url, work)
    shutil.copytree(EXAMPLE_REPO, work, dirs_exist_ok=True)
    run_git("add", "-A", cwd=work)
    run_git("commit", "-qm", message, cwd=work)
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    return run_git("rev-parse", "HEAD", cwd=work).stdout.strip()


def commit_change(work: Path, path: str, old: str, new: str, message: str) -> str:
    file = work / path
    file.write_text(file.read_text().replace(old, new))
    run_git("commit", "-qam", message, cwd=work)
    return run_git("rev-parse", "HEAD", cwd=work).stdout.strip()


def example_models() -> set[str]:
    return set(load_desired(DirTree(EXAMPLE_REPO)).desired.models)


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_fetch_local_transports(tmp_path: Path, form: str) -> None:
    bare = make_bare_repo(tmp_path, "specs")
    sha = push_example(str(bare), tmp_path / "work")
    url = str(bare) if form == "path" else f"file://{bare}"
    source = GitSource(url, "main", tmp_path / "state")
    snap = source.fetch()
    assert snap.commit == sha
    assert snap.revision == f"main@sha1:{sha}"
    result = load_desired(source.tree(snap))
    assert result.diagnostics == ()
    assert set(result.desired.models) == example_models()


def test_fetch_over_git_daemon_reads_the_same_specs_as_disk(
    daemon: GitDaemon, tmp_path: Path
) -> None:
    sha = push_example(daemon.url("specs"), tmp_path / "work")
    source = GitSource(daemon.url("specs"), "main", tmp_path / "state")
    snap = source.fetch()
    assert snap.commit == sha
    from_git = load_desired(source.tree(snap))
    from_disk = load_desired(DirTree(EXAMPLE_REPO))
    assert from_git.desired == from_disk.desired
    assert from_git.diagnostics == ()


def test_fetch_over_http_with_credentials(tmp_path: Path) -> None:
    base = tmp_path / "served"
    base.mkdir()
    make_bare_repo(base, "specs")
    with GitHttpServer(base, username="bot", password="s3cret-t0ken") as server:
        url = server.url("specs")
        authed = url.replace("http://", "http://bot:s3cret-t0ken@")
        push_example(authed, tmp_path / "work")
        good = GitSource(
            url,
            "main",
            tmp_path / "good",
            Credentials.from_env({"MDC_GIT_USERNAME": "bot", "MDC_GIT_TOKEN": "s3cret-t0ken"}),
        )
        assert set(load_desired(good.tree(good.fetch())).desired.models) == example_models()

        started = time.monotonic()
        bad = GitSource(url, "main", tmp_path / "bad", Credentials("bot", "wrong-pass"))
        with pytest.raises(TransientError) as caught:
            bad.fetch()
        assert caught.value.reason == "GitAuthFailed"
        assert time.monotonic() - started < 10  # no 15 credential replays

        in_url = GitSource(authed, "main", tmp_path / "in-url")
        assert in_url.fetch().commit == good.fetch().commit
        assert "s3cret-t0ken" not in in_url.remote.display


def test_error_messages_never_show_the_token(tmp_path: Path) -> None:
    source = GitSource(
        "http://bot:tok-123456@127.0.0.1:9/specs.git",
        "main",
        tmp_path / "s",
    )
    with pytest.raises(TransientError) as caught:
        source.fetch()
    assert caught.value.reason == "GitUnavailable"
    assert "tok-123456" not in str(caught.value)


def test_missing_branch_is_transient(daemon: GitDaemon, tmp_path: Path) -> None:
    push_example(daemon.url("specs"), tmp_path / "work")
    source = GitSource(daemon.url("specs"), "release", tmp_path / "state")
    with pytest.raises(TransientError) as caught:
        source.fetch()
    assert caught.value.reason == "BranchNotFound"


def test_force_push_is_detected_and_followed(daemon: GitDaemon, tmp_path: Path) -> None:
    work = tmp_path / "work"
    first = push_example(daemon.url("specs"), work)
    second = commit_change(work, "models/fraud-scorer.yaml", '"1.0.0"', '"1.1.0"', "v1.1")
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    poller = SourcePoller(GitSource(daemon.url("specs"), "main", tmp_path / "state"), interval=30)
    result = poller.poll(time.time())
    assert (result.changed, result.forced, result.snapshot and result.snapshot.commit) == (
        True,
        False,
        second,
    )
    # rewrite history: drop v1.1, commit something else on top of the first commit
    run_git("reset", "-q", "--hard", first, cwd=work)
    third = commit_change(work, "models/search-ranker.yaml", "2026.11.1", "2026.11.2", "ranker")
    run_git("push", "-q", "--force", "origin", "HEAD:main", cwd=work)
    result = poller.poll(time.time())
    assert (result.changed, result.forced, result.previous) == (True, True, second)
    assert result.snapshot is not None
    assert result.snapshot.commit == third
    desired = load_desired(poller.source.tree(result.snapshot)).desired
    assert desired.models["fraud-scorer"].version == "1.0.0"
    assert desired.models["search-ranker"].version == "2026.11.2"
    # a restarted controller remembers what it saw: no change, no false force-push
    again = SourcePoller(GitSource(daemon.url("specs"), "main", tmp_path / "state"))
    result = again.poll(time.time())
    assert (result.changed, result.forced) == (False, False)


def test_outage_keeps_the_last_snapshot_and_recovers(daemon: GitDaemon, tmp_path: Path) -> None:
    work = tmp_path / "work"
    sha = push_example(daemon.url("specs"), work)
    poller = SourcePoller(GitSource(daemon.url("specs"), "main", tmp_path / "state"), interval=60)
    good = poller.poll(1000.0)
    assert good.error is None
    daemon.kill()
    delays = []
    for i in range(1, 4):
        down = poller.poll(1000.0 + 10 * i)
        assert down.error is not None
        assert down.error.reason == "GitUnavailable"
        assert down.snapshot is not None
        assert down.snapshot.commit == sha
        assert down.failures == i
        assert "last good fetch" in down.condition
        delays.append(down.retry_in)
    assert delays[0] <= 2 < delays[2] <= 8  # exponential back-off, jittered
    daemon.restart()
    back = poller.poll(2000.0)
    assert (back.error, back.failures, back.changed) == (None, 0, False)


def test_parse_cache_skips_unchanged_files(daemon: GitDaemon, tmp_path: Path) -> None:
    work = tmp_path / "work"
    push_example(daemon.url("specs"), work)
    source = GitSource(daemon.url("specs"), "main", tmp_path / "state")
    cache = ParseCache()
    load_desired(source.tree(source.fetch()), cache=cache)
    files = cache.misses
    commit_change(work, "models/fraud-scorer.yaml", '"1.0.0"', '"1.1.0"', "v1.1")
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    result = load_desired(source.tree(source.fetch()), cache=cache)
    assert result.desired.models["fraud-scorer"].version == "1.1.0"
    assert cache.misses == files + 1  # only the changed file was parsed again
    assert cache.hits == files - 1


def test_status_commits_only_when_bytes_change(daemon: GitDaemon, tmp_path: Path) -> None:
    push_example(daemon.url("specs"), tmp_path / "work")
    status = StatusBranch(GitSource(daemon.url("specs"), "main", tmp_path / "state"))
    first = status.commit({"models/a.yaml": b"phase: Healthy\n"}, "a: Healthy", {"Model": "a"})
    assert first is not None
    assert (
        status.commit({"models/a.yaml": b"phase: Healthy\n"}, "a: Healthy", {"Model": "a"}) is None
    )
    assert status.push().pushed == 1
    log = run_git("--git-dir", daemon.base / "specs.git", "log", "--format=%B", "mdc/status")
    assert log.stdout.splitlines()[:3] == ["a: Healthy", "", "Model: a"]
    # the release branch is untouched by status writes
    assert (
        run_git("--git-dir", daemon.base / "specs.git", "log", "--oneline", "main").stdout.count(
            "\n"
        )
        == 1
    )


def test_two_writers_racing_both_land(daemon: GitDaemon, tmp_path: Path) -> None:
    push_example(daemon.url("specs"), tmp_path / "work")
    writers = {
        name: StatusBranch(GitSource(daemon.url("specs"), "main", tmp_path / f"state-{name}"))
        for name in ("a", "b")
    }
    results: dict[str, list[int]] = {"a": [], "b": []}

    def write(name: str) -> None:
        for i in range(5):
            writers[name].commit(
                {f"models/{name}.yaml": f"round: {i}\n".encode()},
                f"{name}: round {i}",
                {"Model": name},
            )
            results[name].append(writers[name].push().pending)

    threads = [threading.Thread(target=write, args=(n,)) for n in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for writer in writers.values():  # anything left behind goes now
        assert writer.push().error is None
    files = writers["a"].files()
    writers["a"].source.fetch_refs(["mdc/status"])
    files = writers["a"].files()
    assert files == {"models/a.yaml": b"round: 4\n", "models/b.yaml": b"round: 4\n"}
    subjects = run_git(
        "--git-dir", daemon.base / "specs.git", "log", "--format=%s", "mdc/status"
    ).stdout.split("\n")
    for name in ("a", "b"):
        assert [s for s in subjects if s.startswith(name + ":")] == [
            f"{name}: round {i}" for i in reversed(range(5))
        ]


def test_status_push_that_fails_is_kept_and_sent_later(daemon: GitDaemon, tmp_path: Path) -> None:
    push_example(daemon.url("specs"), tmp_path / "work")
    status = StatusBranch(GitSource(daemon.url("specs"), "main", tmp_path / "state"))
    daemon.kill()
    status.commit({"models/a.yaml": b"phase: Progressing\n"}, "a: Progressing", {"Model": "a"})
    status.commit({"models/a.yaml": b"phase: Healthy\n"}, "a: Healthy", {"Model": "a"})
    failed = status.push()
    assert failed.error is not None
    assert failed.pending == 2
    # a restarted controller (same state dir) still has them
    status = StatusBranch(GitSource(daemon.url("specs"), "main", tmp_path / "state"))
    assert status.pending() == 2
    daemon.restart()
    sent = status.push()
    assert (sent.error, sent.pending, sent.pushed) == (None, 0, 2)
    shown = run_git("--git-dir", daemon.base / "specs.git", "show", "mdc/status:models/a.yaml")
    assert shown.stdout == "phase: Healthy\n"


def test_history_merges_spec_and_status(daemon: GitDaemon, tmp_path: Path) -> None:
    work = tmp_path / "work"
    push_example(daemon.url("specs"), work)
    commit_change(work, "models/fraud-scorer.yaml", '"1.0.0"', '"1.1.0"', "fraud v1.1")
    commit_change(work, "models/search-ranker.yaml", "2026.11.1", "2026.11.2", "ranker only")
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    source = GitSource(daemon.url("specs"), "main", tmp_path / "state")
    snap = source.fetch()
    status = StatusBranch(source)
    status.commit(
        {"models/fraud-scorer.yaml": b"phase: Healthy\n"},
        "fraud-scorer: Healthy",
        {"Model": "fraud-scorer", "Phase": "Healthy", "Source-Revision": snap.revision},
    )
    status.commit(
        {"models/search-ranker.yaml": b"x\n"}, "search-ranker: Healthy", {"Model": "search-ranker"}
    )
    assert status.push().error is None
    tips = source.fetch_refs(["main", "mdc/status"])
    events = model_history(source.repo, tips["main"] or "", tips["mdc/status"], "fraud-scorer")
    assert [(e.kind, e.subject) for e in events] == [
        ("status", "fraud-scorer: Healthy"),
        ("spec", "fraud v1.1"),
        ("spec", "add specs"),
    ]
    assert events[0].source_revision == snap.revision
    assert events[0].phase == "Healthy"
    assert events[1].changes == ("spec.version: '1.0.0' -> '1.1.0'",)
    assert events[2].changes == ("created",)


def test_unsigned_tip_is_refused_and_the_last_verified_stays(
    daemon: GitDaemon, tmp_path: Path
) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'tests@mdc.invalid namespaces="git" {key.with_suffix(".pub").read_text()}')
    signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}.pub"]

    work = tmp_path / "work"
    run_git("clone", "-q", daemon.url("specs"), work)
    shutil.copytree(EXAMPLE_REPO, work, dirs_exist_ok=True)
    run_git("add", "-A", cwd=work)
    run_git(*signing, "commit", "-S", "-qm", "signed specs", cwd=work)
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    signed = run_git("rev-parse", "HEAD", cwd=work).stdout.strip()

    policy = SigningPolicy(SigningMode.SSH, ssh_allowed_signers=allowed)
    poller = SourcePoller(GitSource(daemon.url("specs"), "main", tmp_path / "s"), signing=policy)
    first = poller.poll(time.time())
    assert first.refused is None
    assert first.snapshot is not None
    assert first.snapshot.commit == signed

    commit_change(work, "models/fraud-scorer.yaml", '"1.0.0"', '"6.6.6"', "unsigned change")
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    refused = poller.poll(time.time())
    assert refused.refused is not None
    assert refused.refused.reason == "Unsigned"
    assert refused.snapshot is not None
    assert refused.snapshot.commit == signed
    assert "the last verified revision stays" in refused.condition

    file = work / "models" / "fraud-scorer.yaml"
    file.write_text(file.read_text().replace('"6.6.6"', '"1.1.0"'))
    run_git(*signing, "commit", "-S", "-qam", "signed fix", cwd=work)
    run_git("push", "-q", "origin", "HEAD:main", cwd=work)
    fixed = poller.poll(time.time())
    assert fixed.refused is None
    assert fixed.changed
    assert fixed.snapshot is not None
    assert (
        load_desired(poller.source.tree(fixed.snapshot)).desired.models["fraud-scorer"].version
        == "1.1.0"
    )


def test_fetch_over_ssh_checks_the_host_key(tmp_path: Path) -> None:
    if SshServer.binary() is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI lacks sshd (Debian openssh-server)")
        pytest.skip("sshd is not installed (Debian openssh-server)")
    bare = make_bare_repo(tmp_path, "specs")
    sha = push_example(str(bare), tmp_path / "work")
    with SshServer(tmp_path / "ssh") as server:
        url = server.url(bare)
        trusted = Credentials(ssh_key=server.client_key, ssh_known_hosts=server.known_hosts)
        source = GitSource(url, "main", tmp_path / "state", trusted)
        snap = source.fetch()
        assert snap.commit == sha
        assert set(load_desired(source.tree(snap)).desired.models) == example_models()

        stranger = tmp_path / "other_known_hosts"
        stranger.write_text(f"[127.0.0.1]:{server.port} ssh-ed25519 {'A' * 68}\n")
        untrusted = Credentials(ssh_key=server.client_key, ssh_known_hosts=stranger)
        with pytest.raises(TransientError) as caught:
            GitSource(url, "main", tmp_path / "state2", untrusted).fetch()
        assert caught.value.reason == "GitHostUntrusted"


def test_pull_request_ref_of_a_fork_is_fetched(daemon: GitDaemon, tmp_path: Path) -> None:
    """A PR from a fork has no branch in the repository, only GitHub's refs/pull/N/head."""
    url = daemon.url("specs")
    work = tmp_path / "work"
    push_example(url, work)
    head = commit_change(
        work, "models/fraud-scorer.yaml", "replicas: 2", "replicas: 3", "fork change"
    )
    run_git("push", "-q", "origin", "HEAD:refs/pull/7/head", cwd=work)
    source = GitSource(url, "main", tmp_path / "state")
    source.fetch()
    assert source.repo.get(head) is None  # not on any branch
    assert source.fetch_pull(7) == head
    assert source.fetch_pull(8) is None  # no such pull request: nothing fetched
