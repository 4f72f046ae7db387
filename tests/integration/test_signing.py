"""controller.adapters.git.signing against real gpg, ssh-keygen and git-signed commits.

Keys are generated once per module in throw-away homes; every commit is made
and signed by the git CLI, the way a release engineer would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest

from controller.adapters.git import signing
from controller.adapters.git.signing import SigningMode, SigningPolicy, verify_commit

pytestmark = pytest.mark.integration

TOOLS = ("git", "gpg", "gpgconf", "gpg-agent", "ssh-keygen")


def require_tools() -> None:
    """Skip without the tools on a workstation; fail in CI, which must have them."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    why = f"needs {', '.join(missing)} on PATH (Debian: gpg gpg-agent openssh-client)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@dataclass(frozen=True)
class World:
    """Keys, policies and the signed commits the tests check."""

    repo: pygit2.Repository
    commits: dict[str, str]
    policies: dict[str, SigningPolicy]
    signers: dict[str, str]


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"{argv} failed: {done.stderr}"
    return done.stdout


def gen_gpg_key(uid: str, env: dict[str, str]) -> str:
    quiet = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    run([*quiet, "--quick-gen-key", uid, "ed25519", "sign", "never"], env)
    listing = run(["gpg", "--batch", "--with-colons", "--list-keys", uid], env)
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def gen_ssh_key(path: Path, env: dict[str, str]) -> str:
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], env)
    kind, blob = path.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {blob}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_tools()
    root = tmp_path_factory.mktemp("signing")
    gnupghome = root / "gnupg"
    gnupghome.mkdir(mode=0o700)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(root),
        "GNUPGHOME": str(gnupghome),
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "Alice",
        "GIT_AUTHOR_EMAIL": "alice@example.com",
        "GIT_COMMITTER_NAME": "Alice",
        "GIT_COMMITTER_EMAIL": "alice@example.com",
    }
    try:
        alice = gen_gpg_key("Alice <alice@example.com>", env)
        mallory = gen_gpg_key("Mallory <mallory@example.com>", env)
        keyring = root / "trusted.gpg"
        keyring.write_bytes(
            subprocess.run(
                ["gpg", "--batch", "--export", alice], env=env, capture_output=True, check=True
            ).stdout
        )
        alice_ssh = gen_ssh_key(root / "alice_ssh", env)
        gen_ssh_key(root / "bob_ssh", env)
        signers = root / "allowed_signers"
        signers.write_text(f'alice@example.com namespaces="git" {alice_ssh}\n')
        file_only = root / "allowed_signers_file_ns"
        file_only.write_text(f'alice@example.com namespaces="file" {alice_ssh}\n')

        workdir = root / "repo"
        run(["git", "init", "-q", str(workdir)], env)
        gpg_sign = ["-c", "gpg.format=openpgp", "-c", "gpg.program=gpg"]
        ssh_sign = ["-c", "gpg.format=ssh"]
        how = {
            "unsigned": [],
            "gpg_alice": [*gpg_sign, "-c", f"user.signingkey={alice}"],
            "gpg_mallory": [*gpg_sign, "-c", f"user.signingkey={mallory}"],
            "ssh_alice": [*ssh_sign, "-c", f"user.signingkey={root / 'alice_ssh.pub'}"],
            "ssh_bob": [*ssh_sign, "-c", f"user.signingkey={root / 'bob_ssh.pub'}"],
        }
        commits: dict[str, str] = {}
        for name, config in how.items():
            sign = ["-S"] if config else ["--no-gpg-sign"]
            run(["git", *config, "commit", "-q", "--allow-empty", *sign, "-m", name], env, workdir)
            commits[name] = run(["git", "rev-parse", "HEAD"], env, workdir).strip()

        repo = pygit2.Repository(str(workdir))
        for name in ("gpg_alice", "ssh_alice"):
            signed = repo[commits[name]]
            assert isinstance(signed, pygit2.Commit)
            signature, payload = signed.gpg_signature
            forged = payload.replace(name.encode(), b"evil").decode()
            oid = repo.create_commit_with_signature(forged, signature.decode())
            commits[name.replace("alice", "tampered")] = str(oid)

        yield World(
            repo=repo,
            commits=commits,
            policies={
                "off": SigningPolicy(SigningMode.OFF),
                "gpg": SigningPolicy(SigningMode.GPG, gpg_keyring=keyring),
                "gpg_only_alice": SigningPolicy(
                    SigningMode.GPG, gpg_keyring=keyring, allowed_fingerprints=frozenset({alice})
                ),
                "gpg_only_mallory": SigningPolicy(
                    SigningMode.GPG, gpg_keyring=keyring, allowed_fingerprints=frozenset({mallory})
                ),
                "ssh": SigningPolicy(SigningMode.SSH, ssh_allowed_signers=signers),
                "ssh_file_ns": SigningPolicy(SigningMode.SSH, ssh_allowed_signers=file_only),
            },
            signers={"alice_gpg": alice, "mallory_gpg": mallory, "alice_ssh": "alice@example.com"},
        )
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)


VERDICTS = [
    # id, commit, policy, ok, reason, signer
    ("gpg-good", "gpg_alice", "gpg", True, "Verified", "alice_gpg"),
    ("gpg-good-allowed-fpr", "gpg_alice", "gpg_only_alice", True, "Verified", "alice_gpg"),
    ("gpg-unsigned", "unsigned", "gpg", False, "Unsigned", None),
    ("gpg-key-not-in-keyring", "gpg_mallory", "gpg", False, "UnknownKey", None),
    ("gpg-fpr-not-allowed", "gpg_alice", "gpg_only_mallory", False, "UnknownKey", "alice_gpg"),
    ("gpg-tampered", "gpg_tampered", "gpg", False, "BadSignature", None),
    ("gpg-policy-ssh-sig", "ssh_alice", "gpg", False, "WrongSignatureKind", None),
    ("ssh-good", "ssh_alice", "ssh", True, "Verified", "alice_ssh"),
    ("ssh-unsigned", "unsigned", "ssh", False, "Unsigned", None),
    ("ssh-signer-not-allowed", "ssh_bob", "ssh", False, "UnknownKey", None),
    ("ssh-wrong-namespace", "ssh_alice", "ssh_file_ns", False, "UnknownKey", None),
    ("ssh-tampered", "ssh_tampered", "ssh", False, "BadSignature", None),
    ("ssh-policy-gpg-sig", "gpg_alice", "ssh", False, "WrongSignatureKind", None),
    ("off-unsigned", "unsigned", "off", True, "SigningDisabled", None),
    ("off-signed", "gpg_alice", "off", True, "SigningDisabled", None),
]


@pytest.mark.parametrize(
    ("commit", "policy", "ok", "reason", "signer"),
    [pytest.param(*case[1:], id=case[0]) for case in VERDICTS],
)
def test_verdict(
    world: World, commit: str, policy: str, ok: bool, reason: str, signer: str | None
) -> None:
    sha = world.commits[commit]
    verdict = verify_commit(world.repo, sha, world.policies[policy])
    assert (verdict.ok, verdict.reason) == (ok, reason), verdict.message
    assert verdict.signer == (world.signers[signer] if signer else None)
    assert sha[:7] in verdict.message
    if verdict.signer is not None:
        assert verdict.signer in verdict.message


def test_unknown_gpg_key_is_named(world: World) -> None:
    verdict = verify_commit(world.repo, world.commits["gpg_mallory"], world.policies["gpg"])
    assert f"key {world.signers['mallory_gpg']}, which is not in the keyring" in verdict.message


def test_fingerprints_are_normalised(world: World) -> None:
    alice = world.signers["alice_gpg"]
    spaced = " ".join(alice[i : i + 4] for i in range(0, len(alice), 4)).lower()
    keyring = world.policies["gpg"].gpg_keyring
    policy = SigningPolicy("gpg", gpg_keyring=keyring, allowed_fingerprints=frozenset({spaced}))  # type: ignore[arg-type]
    assert policy.mode is SigningMode.GPG
    assert policy.allowed_fingerprints == {alice}
    assert verify_commit(world.repo, world.commits["gpg_alice"], policy).ok


POLICY_ERRORS = [
    # id, keyword arguments, part of the message
    ("gpg-without-keyring", {"mode": SigningMode.GPG}, "needs gpg_keyring"),
    ("ssh-without-signers", {"mode": SigningMode.SSH}, "needs ssh_allowed_signers"),
    ("unknown-mode", {"mode": "pgp"}, "'pgp' is not a valid SigningMode"),
    (
        "bad-fingerprint",
        {"mode": "gpg", "gpg_keyring": Path("k"), "allowed_fingerprints": frozenset({"AB12"})},
        "is not an OpenPGP fingerprint",
    ),
    (
        "fingerprints-under-ssh",
        {
            "mode": "ssh",
            "ssh_allowed_signers": Path("s"),
            "allowed_fingerprints": frozenset({"A" * 40}),
        },
        "only apply to signing mode 'gpg'",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), [pytest.param(*case[1:], id=case[0]) for case in POLICY_ERRORS]
)
def test_policy_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SigningPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("commit", "policy", "tool"), [("gpg_alice", "gpg", "gpg"), ("ssh_alice", "ssh", "ssh-keygen")]
)
def test_missing_binary_is_unavailable(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    commit: str,
    policy: str,
    tool: str,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    verdict = verify_commit(world.repo, world.commits[commit], world.policies[policy])
    assert (verdict.ok, verdict.reason) == (False, "VerifierUnavailable")
    assert f"{tool} is not installed" in verdict.message


def test_hung_verifier_times_out(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "gpg"
    fake.write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(signing, "TIMEOUT_S", 0.2)
    verdict = verify_commit(world.repo, world.commits["gpg_alice"], world.policies["gpg"])
    assert (verdict.ok, verdict.reason) == (False, "VerifierUnavailable")
    assert "did not finish" in verdict.message


@pytest.mark.parametrize(
    ("policy", "field"), [("gpg", "gpg_keyring"), ("ssh", "ssh_allowed_signers")]
)
def test_missing_key_file_is_unavailable(
    world: World, tmp_path: Path, policy: str, field: str
) -> None:
    base = world.policies[policy]
    broken = SigningPolicy(base.mode, **{field: tmp_path / "absent"})  # type: ignore[arg-type]
    verdict = verify_commit(world.repo, world.commits[f"{policy}_alice"], broken)
    assert (verdict.ok, verdict.reason) == (False, "VerifierUnavailable")
    assert "absent" in verdict.message


def test_keyring_without_keys_is_unavailable(world: World, tmp_path: Path) -> None:
    empty = tmp_path / "empty.gpg"
    empty.write_bytes(b"not a key\n")
    policy = SigningPolicy(SigningMode.GPG, gpg_keyring=empty)
    verdict = verify_commit(world.repo, world.commits["gpg_alice"], policy)
    assert (verdict.ok, verdict.reason) == (False, "VerifierUnavailable")
    assert "holds no public keys" in verdict.message


def test_not_a_commit_is_a_caller_error(world: World) -> None:
    with pytest.raises(ValueError, match="does not name a commit"):
        verify_commit(world.repo, "0" * 40, world.policies["gpg"])
