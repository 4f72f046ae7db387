"""Faults during a rollout, with ``mdc run`` as a user runs it: the controller
killed at each step of a promotion, git black-holed and the state directory's
disk full while a failing canary has to be rolled back.

Setup (from :mod:`bench.bench_dataplane`): the example spec repository as a bare
repository on disk, ``mdc run --config mdc.yaml`` as a subprocess
(``routerPorts`` fixed, ``leaseTtl: 0`` so that a restarted controller, which
has a new identity, acts at once instead of waiting out its dead
predecessor's lease), both example models deployed, one keep-alive client per
model at :data:`~bench.bench_dataplane.RATE` requests/s through the model's
endpoint; a failure is a transport error or any answer that is not 200.

Parts, each on a deployment of its own (``--part`` runs one):

* ``promotion``: a commit bumps ``search-ranker`` (artifacts v2/v1 in turn) and
  its canary walks to promotion. The controller runs with ``MDC_CRASH_AT``
  naming one of :data:`POINTS` and exits with status 137 there (as ``kill -9``
  leaves it); it is started again at once without the variable, on the same
  state directory and config. The window runs from the push until
  :data:`~bench.bench_dataplane.AFTER_SECONDS` after the model is Healthy on
  the new version. Baseline: the same promotion with no crash.
* ``git``: the spec repository is served by ``git daemon`` behind a TCP proxy
  run here (:class:`GitProxy`); ``mdc run`` reads and pushes through it. A
  commit brings ``search-ranker`` v3, which fails every request whose
  documents lack ``dwell_time`` -- all of this bench's (the spec's probe
  carries it, so the canary warms up). As soon as the canary appears in
  ``/api/status`` (before it takes traffic) the proxy turns into a black
  hole: it accepts connections and never answers or closes them, and
  in-flight connections stop moving bytes. Measured: from the first failed
  request (the canary's first answer) to the last (the router stopped sending
  it traffic), and to ``RolledBack`` in ``/api/status``. Baseline: the same
  with git healthy.
* ``disk``: the state directory on a small tmpfs (``mount -t tmpfs``; needs
  root, else the part is skipped with a line saying why), filled up (a file of
  all its free space) as soon as the canary appears; measured as in ``git``.
  Baseline: the same with free space.

Run: ``.venv/bin/python bench/bench_faults.py [--part promotion|git|disk]``.
Prints figures; asserts nothing. Needs git; no network. Every process it
starts is stopped (``mdc down`` on the state directory, then anything left
that names the workspace), and the tmpfs unmounted, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_dataplane import (  # noqa: E402
    AFTER_SECONDS,
    RANKER,
    RATE,
    REQUESTS,
    SUPERVISED,
    Deployment,
    Load,
    bump,
    git,
)
from controller.app.crashpoints import CRASH_ENV, POINTS  # noqa: E402
from controller.demo import _bump  # noqa: E402
from tests.gitservers import GitDaemon  # noqa: E402

#: The promotion's crash points, in the order a promotion passes them.
PROMOTE_POINTS = tuple(p for p in POINTS if p.startswith("promote."))
#: Seconds between (re)starting the controller and the push, and how long to wait.
SETTLE_SECONDS = 2.0
HEALTHY_TIMEOUT = 300.0
#: The tmpfs for the ``disk`` part; the state directory needs a few MiB.
TMPFS_MB = 64
LEASE_TTL = 0
#: Seconds a faulted round waits for the rollback before it clears the fault.
FAULT_WAIT = 30.0


def _fmt(seconds: float | None, sign: bool = False) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:+.1f}s" if sign else f"{seconds:.1f}s"


class GitProxy:
    """A TCP proxy from a local port to ``git daemon``; :meth:`black_hole` makes
    it accept connections and never answer or close them (and freezes the
    connections in flight), :meth:`heal` closes those and forwards again."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port: int = self.server.getsockname()[1]
        self.open = threading.Event()  # set: bytes flow
        self.open.set()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.accepted = self.held = 0
        self.thread = threading.Thread(target=self._accept, name="git-proxy", daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def _track(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.add(sock)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            self._track(client)
            with self.lock:
                self.accepted += 1
                if not self.open.is_set():
                    self.held += 1  # accepted, never read, never answered, never closed
                    continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                self._drop(client)
                continue
            upstream.settimeout(None)
            self._track(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while not self.open.wait(0.2):  # black-holed: hold the bytes
                    if self.closed.is_set():
                        return
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self._drop(src)

    def _drop(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def black_hole(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        """Close every connection the black hole held, then forward again."""
        with self.lock:
            stuck = list(self.sockets)
        for sock in stuck:
            self._drop(sock)
        self.open.set()

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.server.close()
        self.heal()
        self.thread.join(timeout=5)


class StatusWatch:
    """``/api/status`` polled every 0.1 s from a thread: the ranker's rows by time."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/api/status"
        self.rows: list[tuple[float, dict[str, Any]]] = []
        self.misses: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="status-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    rows = client.get(self.url).json()["models"]
                    row = next(r for r in rows if r["model"] == RANKER)
                    with self.lock:
                        self.rows.append((time.time(), row))
                except (httpx.HTTPError, ValueError, KeyError, StopIteration) as exc:
                    with self.lock:
                        self.misses.append((time.time(), f"{type(exc).__name__}: {exc}"))
                self._stop.wait(0.1)

    def first(self, test: Callable[[dict[str, Any]], bool], since: float = 0.0) -> float | None:
        with self.lock:
            return next((t for t, row in self.rows if t >= since and test(row)), None)

    def wait(
        self, test: Callable[[dict[str, Any]], bool], timeout: float, since: float = 0.0
    ) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (seen := self.first(test, since)) is not None:
                return seen
            time.sleep(0.05)
        return None

    def conditions(self, since: float, until: float) -> list[str]:
        seen: dict[str, None] = {}
        with self.lock:
            for t, row in self.rows:
                if since <= t < until:
                    seen.update(dict.fromkeys(row.get("conditions") or []))
        return list(seen)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)


class FaultDeployment(Deployment):
    """:class:`~bench.bench_dataplane.Deployment` with ``leaseTtl: 0``, and on
    request git served through a :class:`GitProxy` or the state directory on a
    tmpfs of ``tmpfs_mb`` MiB; ``mdc down`` and the unmount on exit."""

    def __init__(self, *, proxy: bool = False, tmpfs_mb: int = 0) -> None:
        super().__init__(SUPERVISED)
        self.daemon: GitDaemon | None = None
        self.proxy: GitProxy | None = None
        self.mount: Path | None = None
        self.state = self.base / "state"
        try:
            config = self.controller.config
            settings = json.loads(config.read_text())
            settings["leaseTtl"] = LEASE_TTL
            if proxy:
                self.daemon = GitDaemon(self.base)
                self.proxy = GitProxy(self.daemon.port)
                settings["repo"] = self.proxy.url("models")
            if tmpfs_mb:
                self.state.mkdir(parents=True, exist_ok=True)
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m", "tmpfs", str(self.state)],
                    check=True,
                    capture_output=True,
                )
                self.mount = self.state
            config.write_text(json.dumps(settings))
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __enter__(self) -> FaultDeployment:
        try:
            if self.daemon is not None:
                self.daemon.start()
            super().__enter__()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            for load in self.loads:
                load.stop()
            self.controller.stop()
            if self.proxy is not None:
                self.proxy.heal()
            if self.state.is_dir():
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    subprocess.run(
                        [*SUPERVISED[:-1], "down", "--state-dir", str(self.state)],
                        capture_output=True,
                        timeout=60,
                        check=False,
                    )
        finally:
            if self.proxy is not None:
                self.proxy.close()
            if self.daemon is not None:
                self.daemon.stop()
            super().__exit__(*exc_info)  # kills what is left naming the workspace, rmtree
            if self.mount is not None:
                done = subprocess.run(["umount", str(self.mount)], capture_output=True, check=False)
                if done.returncode != 0:
                    subprocess.run(["umount", "-l", str(self.mount)], check=False)
                shutil.rmtree(self.base, ignore_errors=True)

    def load_of(self, model: str) -> Load:
        return self.loads[list(REQUESTS).index(model)]

    def restart(self, crash_at: str | None) -> None:
        """Stop the controller (SIGTERM; the router and releases keep serving) and
        start it again, with ``MDC_CRASH_AT=crash_at`` when given."""
        self.controller.stop()
        env = ["env", f"{CRASH_ENV}={crash_at}"] if crash_at else []
        self.controller.command = [*env, *SUPERVISED]
        self.controller.start()
        self.controller.command = SUPERVISED  # the next start is a plain one


def push_failing(work: Path, version: str) -> None:
    """search-ranker ``version`` on artifact v3, which needs ``dwell_time``; the
    probe carries it, this bench's requests do not."""
    _bump(version, "v3.json", probe=True)(work)
    git("-c", "user.name=bench", "-c", "user.email=b@x", "commit", "-qam", version, cwd=work)
    git("push", "-q", "origin", "main", cwd=work)


def promotion(d: FaultDeployment, label: str, crash_at: str | None, version: str, i: int) -> str:
    """One promotion, killed at ``crash_at`` and restarted; its row."""
    proc = d.controller.proc
    assert proc is not None
    since = time.time()
    bump(d.work, version, "v2.json" if i % 2 == 0 else "v1.json")
    exit_code: int | None = None
    crashed = restarted = None
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    while crash_at and time.monotonic() < deadline:
        if (exit_code := proc.poll()) is not None:
            crashed = time.time()
            d.controller.start()
            restarted = time.time()
            break
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            row = d.controller.models()[RANKER]
            if row["phase"] == "Healthy" and row["stable"] == version:
                break  # promoted without reaching the point
        time.sleep(0.05)
    done = d.controller.wait(RANKER, "Healthy", version, HEALTHY_TIMEOUT)
    time.sleep(AFTER_SECONDS)
    until = time.time()
    sent, failed = d.load_of(RANKER).window(since, until)
    _, other = d.load_of("fraud-scorer").window(since, until)
    code = "-" if not crash_at else ("none" if exit_code is None else str(exit_code))
    why = f"  e.g. {failed[0]}" if failed else ""
    return (
        f"  {label:<28} {code:>5} {_fmt(crashed and crashed - since, True):>8}"
        f" {_fmt(restarted and restarted - since, True):>9} {_fmt(done - since):>8}"
        f" {sent:>6} {len(failed):>6} {len(other):>6}{why}"
    )


def part_promotion() -> None:
    print(f"\n[promotion] kill at a crash point (exit 137), restart without {CRASH_ENV}")
    print(f"  mdc.yaml leaseTtl: {LEASE_TTL} (a restarted controller acts at once)")
    print(
        f"  times from the push; sent/failed: {RANKER}; other: fraud-scorer's failures\n"
        f"  {'crash point':<28} {'exit':>5} {'crashed':>8} {'restarted':>9} {'Healthy':>8}"
        f" {'sent':>6} {'failed':>6} {'other':>6}"
    )
    with FaultDeployment() as d:
        for i, point in enumerate([None, *PROMOTE_POINTS]):
            version = f"2026.12.{i + 2}"
            label = point or "baseline: no crash"
            try:
                if point:
                    d.restart(point)
                    time.sleep(SETTLE_SECONDS)
                print(promotion(d, label, point, version, i), flush=True)
            except RuntimeError as exc:
                print(f"  {label:<28} gave up: {exc}", flush=True)
                return


def canary_ready(d: FaultDeployment, version: str) -> bool:
    """Whether the runtime's table says ``version`` of the ranker is up."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        table = json.loads((d.state / "runtime" / "releases.json").read_text())
        return any(
            r["spec"]["model"] == RANKER
            and r["spec"]["version"] == version
            and r["state"] == "ready"
            for r in table
        )
    return False


def failed_passes(log: Path, offset: int) -> int:
    """``reconcile pass failed`` lines in the controller's log after ``offset`` bytes."""
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().count(b"reconcile pass failed")


def rollback(
    d: FaultDeployment,
    label: str,
    version: str,
    *,
    fault: Callable[[], str] | None = None,
    heal: Callable[[], None] | None = None,
    when: str = "shown",
) -> None:
    """A failing canary rolled back; ``fault`` done as soon as the canary shows in
    ``/api/status`` (``when="shown"``) or the runtime has it ready (``"ready"``),
    ``heal`` when it is not rolled back :data:`FAULT_WAIT` seconds later (and at the
    end); its row."""
    load = d.load_of(RANKER)
    watch = StatusWatch(d.controller.url)
    offset = d.controller.log.stat().st_size
    note = stuck = ""
    healed = None
    try:
        since = time.time()
        push_failing(d.work, version)
        appeared = watch.wait(lambda r: r["canary"] == version, 180, since)
        if appeared is None:
            print(f"  {label:<30} no canary of {version} in 180s", flush=True)
            return
        deadline = time.monotonic() + 60
        while when == "ready" and not canary_ready(d, version) and time.monotonic() < deadline:
            time.sleep(0.02)
        faulted = None
        if fault is not None:
            note = fault()
            faulted = time.time()
        wait = FAULT_WAIT if fault is not None else 180
        rolled = watch.wait(lambda r: r["phase"] == "RolledBack", wait, appeared)
        if rolled is None and heal is not None:
            with watch.lock:
                row = watch.rows[-1][1] if watch.rows else {}
            stuck = (
                f"not RolledBack {wait:.0f}s after the fault (status then: {row.get('phase')},"
                f" step {row.get('step')}, weight {row.get('weight')}%)"
            )
            heal()
            healed = time.time()
            rolled = watch.wait(lambda r: r["phase"] == "RolledBack", 120, healed)
        time.sleep(AFTER_SECONDS)
        until = time.time()
        with load.lock:
            fails = [t for t, _ in load.failed if since <= t < until]
            sent = sum(1 for t in load.sent if since <= t < until)
        first, last = (fails[0], fails[-1]) if fails else (None, None)
        weighted = watch.first(lambda r: (r["weight"] or 0) > 0, since)
        conditions = ",".join(watch.conditions(since, until)) or "-"
        misses = len([m for m in watch.misses if since <= m[0] < until])
        print(
            f"  {label:<30} {_fmt(faulted and first and faulted - first, True):>8}"
            f" {_fmt(weighted and first and weighted - first, True):>8}"
            f" {_fmt(first and last and last - first):>10}"
            f" {_fmt(rolled and first and rolled - first):>10}"
            f" {sent:>6} {len(fails):>6} {failed_passes(d.controller.log, offset):>6}"
            f"  {conditions}"
            + (f"  ({misses} status polls unanswered)" if misses else "")
            + (f"  {note}" if note else ""),
            flush=True,
        )
        if stuck:
            after = f"RolledBack {rolled - healed:.1f}s later" if rolled and healed else "still not"
            print(f"  {'':<30} {stuck}; fault cleared: {after}", flush=True)
    finally:
        watch.stop()
        if heal is not None and healed is None:
            heal()


def rollback_header(part: str, fault: str) -> None:
    print(
        f"\n[{part}] a failing canary (v3: every request without dwell_time fails) rolled back;"
        f" fault: {fault}\n"
        f"  times from the first failed request (the canary's first answer);"
        f" last fail: the router stopped sending it traffic;\n"
        f"  passes: 'reconcile pass failed' lines in the controller's log\n"
        f"  {'case':<30} {'fault':>8} {'weight>0':>8} {'last fail':>10}"
        f" {'RolledBack':>10} {'sent':>6} {'failed':>6} {'passes':>6}  conditions seen"
    )


def part_git() -> None:
    rollback_header(
        "git",
        "the git proxy black-holed (accepts, never answers, never closes)"
        " as soon as the canary shows in /api/status",
    )
    with FaultDeployment(proxy=True) as d:
        proxy = d.proxy
        assert proxy is not None
        rollback(d, "baseline: git healthy", "2026.12.2")

        def black_hole() -> str:
            proxy.black_hole()
            return ""

        rollback(d, "git black-holed", "2026.12.3", fault=black_hole, heal=proxy.heal)
        print(
            f"  (proxy: {proxy.held} connections from the controller held unanswered"
            " while black-holed)",
            flush=True,
        )


def tmpfs_refused() -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can."""
    if os.geteuid() != 0:
        return "not root"
    probe = Path(tempfile.mkdtemp(prefix="mdc-bench-tmpfs-"))
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return f"mount -t tmpfs failed: {done.stderr.strip()}"
        subprocess.run(["umount", str(probe)], check=False)
        return None
    except OSError as exc:
        return f"mount: {exc}"
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def fill(directory: Path) -> str:
    """Take every free byte of ``directory``'s filesystem; what is left."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    fd = os.open(directory / "fill", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, free)
        os.lseek(fd, 0, os.SEEK_END)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    stats = os.statvfs(directory)
    return f"(filled {free >> 20} MiB; {stats.f_bavail * stats.f_frsize} bytes left)"


def part_disk() -> None:
    refused = tmpfs_refused()
    if refused is not None:
        print(f"\n[disk] skipped: cannot mount a tmpfs for the state directory ({refused})")
        return
    rollback_header(
        "disk",
        f"the state directory's tmpfs ({TMPFS_MB} MiB) filled up as soon as the canary shows"
        " in /api/status (still starting), or once the runtime has it ready",
    )
    with FaultDeployment(tmpfs_mb=TMPFS_MB) as d:
        used = shutil.disk_usage(d.state).used
        print(f"  (state directory on tmpfs: {used >> 10} KiB used after the deployment)")

        def free() -> None:
            with contextlib.suppress(OSError):
                (d.state / "fill").unlink()

        rollback(d, "baseline: free disk", "2026.12.2")
        full = "disk full, canary starting"
        rollback(d, full, "2026.12.3", fault=lambda: fill(d.state), heal=free)
        full = "disk full, canary ready"
        rollback(d, full, "2026.12.4", fault=lambda: fill(d.state), heal=free, when="ready")


PARTS = {"promotion": part_promotion, "git": part_git, "disk": part_disk}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the with-blocks: everything is stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    args = parser.parse_args(argv)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in background
    started = time.monotonic()
    print(f"traffic: {RATE:.0f} requests/s to each of {len(REQUESTS)} models, keep-alive")
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            part()
    print(f"\ntook {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
