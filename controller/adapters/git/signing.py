"""The signed-release policy: is the release branch's tip signed by an allowed key?

An operator may require that every revision mdc applies carries a valid GPG or
SSH signature from a key they trust. This module owns that check and nothing
else: :class:`SigningPolicy` says which keys are allowed, and
:func:`verify_commit` checks one commit against it and returns a
:class:`Verdict`. It never raises for a missing or bad signature; the verdict's
``reason`` (a CamelCase word used verbatim as a status condition reason) says
what is wrong, and its ``message`` says it in a sentence naming the commit.

The git source adapter calls :func:`verify_commit` after each fetch, on the tip
it is about to hand to the reconciler. When the verdict is not ``ok`` it keeps
the last verified revision running and reports the reason.

Verification runs the real tools, the same way ``git verify-commit`` does:

* GPG: ``gpg --verify`` in a throw-away ``GNUPGHOME`` into which the operator's
  exported public keyring is imported (never the user's own ``~/.gnupg``); the
  result is read from gpg's ``--status-fd`` lines, not its exit code alone.
* SSH: ``ssh-keygen -Y find-principals`` against git's allowed-signers file to
  learn who signed, then ``ssh-keygen -Y verify -n git`` for that principal.

Every process runs without a shell, with a minimal environment and a timeout
(:data:`TIMEOUT_S`); a verifier that cannot run at all gives
``VerifierUnavailable``, which is never ``ok``.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import subprocess
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pygit2

__all__ = [
    "TIMEOUT_S",
    "SigningMode",
    "SigningPolicy",
    "Verdict",
    "verify_commit",
]

#: Seconds each gpg or ssh-keygen run may take before the check gives up.
TIMEOUT_S = 10.0

_PGP_ARMOR = b"-----BEGIN PGP SIGNATURE-----"
_SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
_KIND_NAMES = {"gpg": "a GPG", "ssh": "an SSH", "": "an unrecognised (neither GPG nor SSH)"}
_STATUS_PREFIX = "[GNUPG:] "
#: gpg's ERRSIG return code for "no public key".
_ERRSIG_NO_PUBKEY = "9"
#: The status keywords that each report the outcome of one signature.
_GPG_RESULTS = frozenset({"GOODSIG", "BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG"})
_SSH_GOOD = re.compile(r"with (\S+) key (\S+)")


class SigningMode(StrEnum):
    """Which kind of signature the release tip must carry, if any."""

    OFF = "off"
    GPG = "gpg"
    SSH = "ssh"


@dataclass(frozen=True)
class SigningPolicy:
    """Which signatures make a commit acceptable.

    ``gpg_keyring`` is a public keyring exported by the operator (binary or
    armored, as ``gpg --export`` writes it); every key in it may sign unless
    ``allowed_fingerprints`` is non-empty, in which case the signing key's own
    or its primary key's fingerprint must be listed. ``ssh_allowed_signers`` is
    a file in git's ``gpg.ssh.allowedSignersFile`` format; its ``namespaces``
    option, when present, must allow ``git``. Fingerprints are normalised to
    upper case without spaces.
    """

    mode: SigningMode
    gpg_keyring: Path | None = None
    allowed_fingerprints: frozenset[str] = field(default_factory=frozenset)
    ssh_allowed_signers: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", SigningMode(self.mode))
        if self.gpg_keyring is not None:
            object.__setattr__(self, "gpg_keyring", Path(self.gpg_keyring))
        if self.ssh_allowed_signers is not None:
            object.__setattr__(self, "ssh_allowed_signers", Path(self.ssh_allowed_signers))
        fingerprints = frozenset("".join(fpr.split()).upper() for fpr in self.allowed_fingerprints)
        for fpr in sorted(fingerprints):
            if len(fpr) not in (40, 64) or not set(fpr) <= set(string.hexdigits.upper()):
                raise ValueError(
                    f"allowed_fingerprints: {fpr!r} is not an OpenPGP fingerprint "
                    "(40 or 64 hex digits)"
                )
        object.__setattr__(self, "allowed_fingerprints", fingerprints)
        if self.mode is SigningMode.GPG and self.gpg_keyring is None:
            raise ValueError("signing mode 'gpg' needs gpg_keyring (an exported public keyring)")
        if self.mode is SigningMode.SSH and self.ssh_allowed_signers is None:
            raise ValueError(
                "signing mode 'ssh' needs ssh_allowed_signers (an allowed-signers file)"
            )
        if self.mode is SigningMode.SSH and fingerprints:
            raise ValueError("allowed_fingerprints only apply to signing mode 'gpg', not 'ssh'")


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one commit against a :class:`SigningPolicy`.

    ``reason`` is one of ``Verified``, ``SigningDisabled`` (both ``ok``),
    ``Unsigned``, ``BadSignature``, ``UnknownKey``, ``WrongSignatureKind`` and
    ``VerifierUnavailable``. ``signer`` is set only once the signature has been
    checked against a key: the primary key fingerprint for GPG, the principal
    for SSH. ``message`` names the commit's short sha and any claimed key.
    """

    ok: bool
    reason: str
    message: str
    signer: str | None = None


class _Unavailable(Exception):
    """The verifier could not be run; the message says why."""


def verify_commit(repo: pygit2.Repository, commit_id: str, policy: SigningPolicy) -> Verdict:
    """Check the signature of ``commit_id`` in ``repo`` against ``policy``.

    Raises :class:`ValueError` only when ``commit_id`` names no commit (a
    caller's bug); every signature problem is a :class:`Verdict`.
    """
    obj = repo.get(commit_id)
    if not isinstance(obj, pygit2.Commit):
        raise ValueError(f"{commit_id} does not name a commit in {repo.path}")
    short = str(obj.short_id)
    if policy.mode is SigningMode.OFF:
        return Verdict(True, "SigningDisabled", f"commit {short} was not checked: signing is off")
    signature, payload = obj.gpg_signature
    if signature is None or payload is None:
        return Verdict(False, "Unsigned", f"commit {short} is not signed")
    kind = _kind(signature)
    if kind != policy.mode:
        return Verdict(
            False,
            "WrongSignatureKind",
            f"commit {short} carries {_KIND_NAMES[kind]} signature, but the policy requires "
            f"{_KIND_NAMES[policy.mode]} one",
        )
    with tempfile.TemporaryDirectory(prefix="mdc-verify-") as tmp:
        workdir = Path(tmp)
        (workdir / "signature").write_bytes(signature)
        (workdir / "payload").write_bytes(payload)
        try:
            if policy.mode is SigningMode.GPG:
                return _verify_gpg(workdir, short, policy)
            return _verify_ssh(workdir, short, policy, payload)
        except _Unavailable as exc:
            return Verdict(
                False, "VerifierUnavailable", f"commit {short} could not be verified: {exc}"
            )


def _kind(signature: bytes) -> str:
    """``gpg``, ``ssh`` or ``""`` for a signature in any other format (X.509...)."""
    head = signature.lstrip()
    if head.startswith(_PGP_ARMOR):
        return SigningMode.GPG.value
    if head.startswith(_SSH_ARMOR):
        return SigningMode.SSH.value
    return ""


def _verify_gpg(workdir: Path, short: str, policy: SigningPolicy) -> Verdict:
    keyring = policy.gpg_keyring
    assert keyring is not None  # checked by SigningPolicy
    if not keyring.is_file():
        raise _Unavailable(f"the GPG keyring {keyring} is not a readable file")
    home = workdir / "gnupg"
    home.mkdir(mode=0o700)
    env = _environment(workdir, GNUPGHOME=str(home))
    gpg = ["gpg", "--batch", "--no-tty", "--no-autostart", "--status-fd", "1"]
    imported = _status(_run([*gpg, "--import", str(keyring.absolute())], env).stdout)
    if not any(keyword == "IMPORT_OK" for keyword, _ in imported):
        raise _Unavailable(f"the GPG keyring {keyring} holds no public keys gpg could import")

    done = _run(
        [
            *gpg,
            "--no-auto-key-retrieve",
            "--trust-model",
            "always",
            "--verify",
            str(workdir / "signature"),
            str(workdir / "payload"),
        ],
        env,
    )
    status = _status(done.stdout)
    found = dict(status)
    results = [keyword for keyword, _ in status if keyword in _GPG_RESULTS]
    if len(results) > 1:
        return Verdict(False, "BadSignature", f"commit {short} carries more than one signature")
    errsig = found.get("ERRSIG", [])
    if "NO_PUBKEY" in found or errsig[5:6] == [_ERRSIG_NO_PUBKEY]:
        key = errsig[6] if len(errsig) > 6 else found.get("NO_PUBKEY", ["?"])[0]
        return Verdict(
            False,
            "UnknownKey",
            f"commit {short} is signed by key {key}, which is not in the keyring",
        )
    if errsig:
        return Verdict(
            False,
            "BadSignature",
            f"commit {short} has a signature gpg cannot check (error {' '.join(errsig[5:6])})",
        )
    if "BADSIG" in found:
        key = found["BADSIG"][0]
        return Verdict(False, "BadSignature", f"commit {short} has a bad signature from key {key}")
    for keyword, what in (("EXPKEYSIG", "expired"), ("REVKEYSIG", "revoked")):
        if keyword in found:
            key = found[keyword][0]
            return Verdict(
                False, "UnknownKey", f"commit {short} is signed by key {key}, which is {what}"
            )
    if "EXPSIG" in found:
        return Verdict(False, "BadSignature", f"commit {short} has an expired signature")
    valid = found.get("VALIDSIG", [])
    if "GOODSIG" not in found or not valid or done.returncode != 0:
        return Verdict(False, "BadSignature", f"commit {short} has no signature gpg could read")

    signing_key = valid[0]
    primary = valid[9] if len(valid) > 9 else signing_key
    uid = " ".join(found["GOODSIG"][1:])
    who = f"{uid} ({primary})" if uid else primary
    if policy.allowed_fingerprints and not {signing_key, primary} & policy.allowed_fingerprints:
        return Verdict(
            False,
            "UnknownKey",
            f"commit {short} is signed by {who}, which is not an allowed fingerprint",
            primary,
        )
    return Verdict(True, "Verified", f"commit {short} is signed by {who}", primary)


def _verify_ssh(workdir: Path, short: str, policy: SigningPolicy, payload: bytes) -> Verdict:
    allowed = policy.ssh_allowed_signers
    assert allowed is not None  # checked by SigningPolicy
    if not allowed.is_file():
        raise _Unavailable(f"the SSH allowed-signers file {allowed} is not a readable file")
    env = _environment(workdir)
    signature = str(workdir / "signature")
    signers = str(allowed.absolute())
    found = _run(["ssh-keygen", "-Y", "find-principals", "-s", signature, "-f", signers], env)
    if found.returncode != 0:
        error = _first_line(found.stderr)
        if "No principal matched" in error:
            return Verdict(
                False,
                "UnknownKey",
                f"commit {short} is signed by an SSH key that is not in {allowed.name}",
            )
        return Verdict(
            False, "BadSignature", f"commit {short} has an unreadable signature: {error}"
        )

    principals = [line.strip() for line in found.stdout.decode(errors="replace").splitlines()]
    error = ""
    for principal in filter(None, principals):
        argv = ["-Y", "verify", "-f", signers, "-I", principal, "-n", "git", "-s", signature]
        done = _run(["ssh-keygen", *argv], env, stdin=payload)
        if done.returncode == 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            match = _SSH_GOOD.search(output)
            key = f" ({match.group(1)} key {match.group(2)})" if match else ""
            return Verdict(
                True, "Verified", f"commit {short} is signed by {principal}{key}", principal
            )
        error = error or _first_line(done.stderr)
    if "incorrect signature" in error:
        return Verdict(False, "BadSignature", f"commit {short} has a bad signature: {error}")
    return Verdict(
        False,
        "UnknownKey",
        f"commit {short} is signed by a key listed for {', '.join(principals)}, "
        f"but that key may not sign git commits: {error or 'no principal verified'}",
    )


def _environment(workdir: Path, **extra: str) -> dict[str, str]:
    """The whole environment a verifier sees: nothing of the caller's but PATH."""
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(workdir),
        "LC_ALL": "C",
        **extra,
    }


def _run(
    argv: list[str], env: dict[str, str], *, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    program = shutil.which(argv[0], path=env["PATH"])
    if program is None:
        raise _Unavailable(f"{argv[0]} is not installed (not found on PATH)")
    try:
        return subprocess.run(
            [program, *argv[1:]],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _Unavailable(f"{argv[0]} did not finish within {TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise _Unavailable(f"{argv[0]} could not be run: {exc.strerror or exc}") from None


def _status(output: bytes) -> list[tuple[str, list[str]]]:
    """gpg's ``--status-fd`` lines as (keyword, arguments), in order."""
    lines = output.decode(errors="replace").splitlines()
    parsed = [line.removeprefix(_STATUS_PREFIX).split() for line in lines]
    return [
        (words[0], words[1:])
        for line, words in zip(lines, parsed, strict=True)
        if line.startswith(_STATUS_PREFIX) and words
    ]


def _first_line(output: bytes) -> str:
    for line in output.decode(errors="replace").splitlines():
        if line.strip():
            return line.strip()
    return "no error message"
