"""The local runtime: releases served by ``bentoml serve`` on this machine.

Owns starting a release (a bento on a loopback port, with its own
``BENTOML_HOME`` whose ``models/`` and ``bentos/`` link to the shared stores --
two servers sharing a home would share, and wipe, each other's Prometheus
metrics -- telemetry off, and the GPU environment the ledger gave it),
judging it (``/readyz`` within a deadline, then a real request to the
service, because a hung worker leaves ``/readyz`` green), restarting a
crashed release with exponential back-off, stopping one gracefully (SIGTERM,
drain, SIGKILL) together with every process it started, a process table
in the state directory so a restarted controller adopts releases that still
run and cleans up those that do not, and each release's log
(``STATE/runtime/logs``), rotated by size in :meth:`LocalRuntime.tick`.

Every process of a release carries that release's ``BENTOML_HOME`` in its
environment, which is how all of them -- workers orphaned by a killed server
too -- are found again, and how its port is learnt: unless the spec names one,
the server starts with ``--port 0``, binds a port the kernel picks (no port is
ever chosen by binding and releasing it, which races other processes for it),
and the runtime reads that port from ``/proc`` (:func:`listening_port`) while
the release is starting. Time is a parameter of :meth:`LocalRuntime.tick`.

Called by the reconciler, ``mdc logs`` and the tests.
"""

from __future__ import annotations

import builtins
import contextlib
import glob
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import httpx
import yaml

from controller.adapters.runtime.base import Event, Release, ReleaseSpec, State
from controller.core.backoff import backoff_delay
from controller.core.environment import PYTHON_SITE_LABEL, bentoml_env
from controller.core.inventory import ClusterNode
from controller.spec.kinds import Probe

__all__ = [
    "LOG_KEEP",
    "LOG_MAX_BYTES",
    "LocalRuntime",
    "listening_port",
    "release_home",
    "release_log",
]

log = logging.getLogger(__name__)

DRAIN_SECONDS = 10.0
LOG_MAX_BYTES = 10 * 1024 * 1024  # a release's log rotates past this size ...
LOG_KEEP = 3  # ... keeping this many old files: NAME.log.1 (newest) to NAME.log.3
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def _proc_start(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None  # a zombie has finished
    return int(fields[19])


def _processes_with_home(home: Path) -> list[int]:
    """Every live process whose environment has ``BENTOML_HOME=home``."""
    wanted = f"BENTOML_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0") and _proc_start(int(entry.name)) is not None:
            found.append(int(entry.name))
    return sorted(found)


def _loopback_listeners(pid: int) -> dict[int, int]:
    """Socket inode -> port of every TCP socket listening on 127.0.0.1 (or its
    IPv4-mapped IPv6 form) in the network namespace of ``pid``."""
    found = {}
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            address, port = fields[1].split(":")
            # the kernel prints each 32-bit word of the address in host byte order
            raw = b"".join(
                struct.pack("=I", int(address[i : i + 8], 16)) for i in range(0, len(address), 8)
            )
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if ip == _LOOPBACK:
                found[int(fields[9])] = int(port, 16)
    return found


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets ``pid`` has open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening_port(home: Path) -> int | None:
    """The loopback port the release with ``BENTOML_HOME=home`` serves on; None
    while none is found.

    ``bentoml serve --port 0`` has its arbiter (circus) bind the socket, so the
    kernel picks a free port atomically, and hands it to its workers. The
    arbiter also listens on loopback ports of its own (its ZMQ endpoints), which
    no worker holds, so the port served is a listening socket held by more than
    one process of the release (found by their ``BENTOML_HOME``, mapped from
    ``/proc/PID/fd`` to ``/proc/PID/net/tcp`` and ``tcp6``); with several such
    sockets, the one the most processes hold (the lowest port on a tie).
    """
    processes = _processes_with_home(home)
    if not processes:
        return None
    listeners = _loopback_listeners(processes[0])
    holders: dict[int, int] = {}
    for pid in processes:
        for inode in _socket_inodes(pid) & listeners.keys():
            holders[inode] = holders.get(inode, 0) + 1
    shared = [(count, -listeners[inode]) for inode, count in holders.items() if count > 1]
    if not shared:
        return None
    return -max(shared)[1]


class LocalRuntime:
    """Releases as local ``bentoml serve`` processes, tracked in ``state_dir/runtime``."""

    def __init__(
        self,
        state_dir: Path,
        bento_home: Path,
        *,
        python: str = sys.executable,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_keep: int = LOG_KEEP,
    ) -> None:
        if log_max_bytes < 1 or log_keep < 0:
            raise ValueError(f"log_max_bytes {log_max_bytes} < 1 or log_keep {log_keep} < 0")
        # absolute: a release's home is matched in /proc environments and linked to
        # the stores, so a relative --state-dir (the default .mdc-state) must not leak
        self.dir = Path(state_dir).absolute() / "runtime"
        for sub in ("homes", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.bento_home = Path(bento_home).absolute()
        self.python = python
        self.clock = clock
        self.rng = rng or random.Random()
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.table = self.dir / "releases.json"
        self._saved: str | None = None  # the table's text as last written
        self.save_error: str | None = None  # why the table could not be written, while so
        self.releases: dict[str, Release] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.events: list[Event] = []
        self._adopt()

    # -- paths ------------------------------------------------------------------

    def home(self, name: str) -> Path:
        return release_home(self.dir.parent, name)

    def log_path(self, name: str) -> Path:
        return release_log(self.dir.parent, name)

    # -- the process table ------------------------------------------------------

    def _save(self) -> None:
        rows = []
        for r in self.releases.values():
            row = asdict(r)
            row["spec"]["env"] = dict(r.spec.env)
            row["spec"]["probe"] = None if r.spec.probe is None else asdict(r.spec.probe)
            rows.append(row)
        text = json.dumps(rows, indent=1, default=list)
        if text == self._saved:
            return  # unchanged: no write every tick
        tmp = self.table.with_suffix(".tmp")
        try:
            tmp.write_text(text)
            tmp.replace(self.table)
        except OSError as exc:  # a full disk: kept in memory, saved when there is room
            with contextlib.suppress(OSError):
                tmp.unlink()
            if str(exc) != self.save_error:
                log.error("process table %s not saved (kept, saved later): %s", self.table, exc)
            self.save_error = str(exc)
            return
        if self.save_error is not None:
            log.warning("process table %s saved again", self.table)
        self._saved, self.save_error = text, None

    def _adopt(self) -> None:
        if not self.table.exists():
            return
        try:
            rows = json.loads(self.table.read_text())
        except (OSError, ValueError) as exc:
            log.error("process table %s unreadable (%s): starting empty", self.table, exc)
            rows = []
        now = self.clock()
        for row in rows:
            spec_row = row["spec"]
            probe = spec_row.get("probe")
            spec = ReleaseSpec(
                **{
                    **spec_row,
                    "gpus": tuple(spec_row.get("gpus", ())),
                    "probe": Probe(**probe) if probe else None,
                }
            )
            release = Release(**{**row, "spec": spec, "state": State(row["state"])})
            if release.state not in (State.STOPPED, State.FAILED) and self._still_running(release):
                self.releases[spec.name] = release
                self.events.append(
                    Event(spec.name, "Adopted", f"pid {release.pid}, port {release.port}")
                )
                continue
            leftovers = self._clear_leftovers(release)
            if release.state in (State.STOPPED, State.FAILED):
                self.releases[spec.name] = release
                continue
            self.releases[spec.name] = replace(
                release,
                pid=None,
                state=State.CRASHED,
                since=now,
                restart_at=now,
                reason="not running when the controller started",
            )
            self.events.append(
                Event(
                    spec.name,
                    "CleanedUp",
                    f"pid {release.pid} was gone; "
                    f"{leftovers} leftover processes killed; restarting",
                )
            )
        self._save()

    def _still_running(self, release: Release) -> bool:
        """Whether a release in the process table still runs (same pid, same start)."""
        return (
            release.pid is not None
            and release.proc_start is not None
            and _proc_start(release.pid) == release.proc_start
        )

    def _clear_leftovers(self, release: Release) -> int:
        """Kill what is left of a release that is not running; how many processes."""
        leftovers = _processes_with_home(self.home(release.spec.name))
        self._kill(leftovers, signal.SIGKILL)
        return len(leftovers)

    # -- starting and stopping ----------------------------------------------------

    def start(self, spec: ReleaseSpec) -> Release:
        """Start ``spec`` (or return it, when it already runs)."""
        current = self.releases.get(spec.name)
        if current is not None and current.state not in (State.STOPPED, State.FAILED):
            return current
        release = self._spawn(spec, crashes=0)
        where = f"port {release.port}" if release.port else "a port the kernel picks"
        self.events.append(Event(spec.name, "Started", f"{spec.bento} on {where}"))
        return release

    def _python_path(self, bento: str) -> dict[str, str]:
        """``PYTHONPATH`` of the model's own packages, when its bento was built with
        them (the packager's ``mdc.dev/python-site`` label); empty otherwise."""
        name, _, version = bento.partition(":")
        info = self.bento_home / "bentos" / name / version / "bento.yaml"
        try:
            labels = (yaml.safe_load(info.read_text()) or {}).get("labels") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            return {}
        site = labels.get(PYTHON_SITE_LABEL) if isinstance(labels, dict) else None
        return {"PYTHONPATH": str(site)} if isinstance(site, str) and site else {}

    def _spawn(self, spec: ReleaseSpec, crashes: int) -> Release:
        home = self.home(spec.name)
        home.mkdir(parents=True, exist_ok=True)
        for sub in ("models", "bentos"):
            link = home / sub
            if not link.is_symlink():
                link.symlink_to(self.bento_home / sub)
        port = spec.port or 0  # 0: the server binds a port the kernel picks
        where = f"port {port}" if port else "a port the kernel picks"
        now = self.clock()
        logfile = self.log_path(spec.name).open("ab")
        logfile.write(f"--- mdc: starting {spec.bento} on {where} ---\n".encode())
        logfile.flush()
        env = bentoml_env(home, {**spec.env, **self._python_path(spec.bento)})
        proc = subprocess.Popen(
            [
                self.python,
                "-m",
                "bentoml",
                "serve",
                spec.bento,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()
        self.children[spec.name] = proc
        release = Release(
            spec,
            port,
            proc.pid,
            State.STARTING,
            now,
            "",
            crashes,
            now,
            proc_start=_proc_start(proc.pid),
        )
        self.releases[spec.name] = release
        self._save()
        return release

    def stop(self, name: str, drain: float = DRAIN_SECONDS) -> Release | None:
        """SIGTERM every process of the release, wait ``drain`` seconds, SIGKILL the rest."""
        release = self.releases.get(name)
        if release is None:
            return None
        processes = _processes_with_home(self.home(name))
        self._kill(processes, signal.SIGTERM)
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and _processes_with_home(self.home(name)):
            self._reap(name)
            time.sleep(0.05)
        self._kill(_processes_with_home(self.home(name)), signal.SIGKILL)
        self._reap(name, wait=True)
        stopped = replace(
            release, state=State.STOPPED, since=self.clock(), pid=None, reason="stopped"
        )
        self.releases[name] = stopped
        self.events.append(Event(name, "Stopped", "stopped"))
        self._save()
        return stopped

    def stop_all(self, drain: float = DRAIN_SECONDS) -> None:
        for name in list(self.releases):
            self.stop(name, drain)

    def forget(self, name: str) -> None:
        """Drop a stopped release from the table (its log stays)."""
        release = self.releases.get(name)
        if release is not None and release.state is State.STOPPED:
            del self.releases[name]
            self._save()

    @staticmethod
    def _kill(pids: builtins.list[int], sig: signal.Signals) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self, name: str, wait: bool = False) -> int | None:
        proc = self.children.get(name)
        if proc is None:
            return None
        try:
            code = proc.wait(timeout=5) if wait else proc.poll()
        except subprocess.TimeoutExpired:
            return None
        if code is not None:
            del self.children[name]
        return code

    # -- watching ----------------------------------------------------------------

    def cluster_nodes(self) -> builtins.list[ClusterNode] | None:
        """The nodes of the cluster releases run on; None: no cluster, this machine
        only (pools list their nodes)."""
        return None

    def list(self) -> builtins.list[Release]:
        return sorted(self.releases.values(), key=lambda r: r.spec.name)

    def _alive(self, release: Release) -> bool:
        if release.pid is None:
            return False
        if release.spec.name in self.children:
            return self._reap(release.spec.name) is None
        return _proc_start(release.pid) == release.proc_start

    def tick(self, now: float | None = None) -> builtins.list[Event]:
        """Look at every release once; returns what happened since the last tick."""
        now = self.clock() if now is None else now
        for name, release in list(self.releases.items()):
            updated = self._tick_one(release, now)
            if updated != release:
                self.releases[name] = updated
        for name in self.releases:  # after the ticks, which read crashed releases' logs
            self._rotate_log(name)
        self._save()
        events, self.events = self.events, []  # with those since the last tick (Adopted...)
        return events

    def _set(self, release: Release, state: State, now: float, reason: str, event: str) -> Release:
        self.events.append(Event(release.spec.name, event, reason))
        if event in ("Crashed", "Failed", "Unhealthy"):
            log.warning("%s: %s", release.spec.name, reason)
        return replace(release, state=state, since=now, reason=reason)

    def _tick_one(self, r: Release, now: float) -> Release:
        if r.state in (State.STOPPED, State.FAILED):
            return r
        if r.state is State.CRASHED:
            if r.restart_at is not None and now >= r.restart_at:
                again = self._spawn(r.spec, r.crashes)
                self.events.append(
                    Event(r.spec.name, "Restarted", f"attempt after {r.crashes} crash(es)")
                )
                return again
            return r
        if not self._alive(r):
            why = self._exit_reason(r)
            # only a port the spec named can be taken; with port 0 the kernel picks
            # (an "in use" then is BentoML's own race for its ZMQ ports: a crash)
            if r.spec.port and "address already in use" in why.lower():
                self._cleanup(r)
                return replace(
                    self._set(r, State.FAILED, now, f"port {r.port} is taken: {why}", "Failed"),
                    pid=None,
                )
            crashes = r.crashes + 1
            delay = backoff_delay(crashes, base=1.0, cap=300.0, rng=self.rng)
            self._cleanup(r)
            crashed = self._set(
                r,
                State.CRASHED,
                now,
                f"exited ({why}); restart {crashes} in {delay:.1f}s",
                "Crashed",
            )
            return replace(crashed, pid=None, crashes=crashes, restart_at=now + delay)
        if r.state is State.STARTING:
            if not r.spec.port:
                # learned again every tick until it answers: caught mid-fork, a
                # worker holds every socket of the arbiter for a moment, so a port
                # of the arbiter's own can look like the one served
                r = self._learn_port(r)
            if r.port and self._ready(r) and self._probe(r):
                return replace(
                    self._set(r, State.READY, now, f"ready on port {r.port}", "Ready"),
                    next_probe=now + self._interval(r),
                )
            if now - r.started_at > r.spec.ready_timeout:
                self.stop(r.spec.name, drain=2.0)
                return replace(
                    self._set(
                        r,
                        State.FAILED,
                        now,
                        f"not ready within {r.spec.ready_timeout:g}s",
                        "Failed",
                    ),
                    pid=None,
                )
            return r
        if now < r.next_probe:
            return r
        healthy = self._ready(r) and self._probe(r)
        if healthy:
            if r.state is State.UNHEALTHY:
                r = self._set(r, State.READY, now, "answering again", "Recovered")
            return replace(r, probe_failures=0, next_probe=now + self._interval(r))
        failures = r.probe_failures + 1
        threshold = r.spec.probe.failure_threshold if r.spec.probe else 3
        r = replace(r, probe_failures=failures, next_probe=now + self._interval(r))
        if failures >= threshold and r.state is State.READY:
            return self._set(
                r, State.UNHEALTHY, now, f"{failures} probes failed in a row", "Unhealthy"
            )
        return r

    def _learn_port(self, r: Release) -> Release:
        """``r`` with the port its server listens on, once it does (recorded in the
        process table at the end of the tick, so an adopted release keeps it)."""
        port = listening_port(self.home(r.spec.name))
        if port is None or port == r.port:
            return r
        log.info("%s: listening on port %d", r.spec.name, port)
        with contextlib.suppress(OSError), self.log_path(r.spec.name).open("ab") as f:
            f.write(f"--- mdc: listening on port {port} ---\n".encode())
        return replace(r, port=port)

    def _interval(self, r: Release) -> float:
        return r.spec.probe.interval if r.spec.probe else 10.0

    def _cleanup(self, r: Release) -> None:
        self._kill(_processes_with_home(self.home(r.spec.name)), signal.SIGKILL)
        self._reap(r.spec.name, wait=True)

    def _exit_reason(self, r: Release) -> str:
        code = None
        proc = self.children.get(r.spec.name)
        if proc is not None:
            code = proc.poll()
        tail = self.tail(r.spec.name, 5)
        last = next((line for line in reversed(tail) if line.strip()), "")
        return (f"exit code {code}; " if code is not None else "") + (last or "no output")

    def _ready(self, r: Release) -> bool:
        try:
            return httpx.get(f"{r.url}/readyz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _probe(self, r: Release) -> bool:
        probe = r.spec.probe
        if probe is None:
            try:
                return httpx.get(f"{r.url}/livez", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False
        try:
            answer = httpx.post(
                f"{r.url}{probe.path}", json=dict(probe.body), timeout=probe.timeout
            )
        except httpx.HTTPError:
            return False
        return 200 <= answer.status_code < 300

    def wait_ready(self, name: str, timeout: float, step: float = 0.1) -> Release:
        """Tick until ``name`` is ready or settled otherwise (for tests and the CLI)."""
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            release = self.releases[name]
            if release.state in (State.READY, State.FAILED, State.CRASHED, State.STOPPED):
                return release
            if time.monotonic() > deadline:
                return release
            time.sleep(step)

    # -- logs --------------------------------------------------------------------

    def old_log(self, name: str, n: int) -> Path:
        """The ``n``-th newest rotated log of ``name`` (``NAME.log.1`` is the newest)."""
        path = self.log_path(name)
        return path.with_name(f"{path.name}.{n}")

    def _rotate_log(self, name: str) -> bool:
        """Rotate the log of ``name`` once it passes ``log_max_bytes``: shift the old
        files (``.1`` to ``.2`` ..., dropping those past ``log_keep``), copy the live
        log to ``.1`` and truncate it. Copy-then-truncate, because the server writes
        through a file descriptor it inherited and cannot be told to reopen; that
        descriptor is ``O_APPEND``, so its next write lands at the new end of the
        file. Lines written between the copy and the truncation are lost. The log
        can pass the limit by what the server writes between two ticks."""
        path = self.log_path(name)
        if not path.exists():  # nothing written yet, or removed by hand: nothing to rotate
            return False
        try:
            if path.stat().st_size <= self.log_max_bytes:
                return False
            for n in range(self.log_keep, 0, -1):
                older = self.old_log(name, n)
                if older.exists():
                    older.replace(self.old_log(name, n + 1))
            if self.log_keep:
                shutil.copyfile(path, self.old_log(name, 1))
            os.truncate(path, 0)
            for extra in path.parent.glob(f"{glob.escape(path.name)}.*"):
                suffix = extra.name.rsplit(".", 1)[1]
                if suffix.isdigit() and int(suffix) > self.log_keep:
                    extra.unlink()
        except OSError as exc:
            log.warning("%s: log %s not rotated: %s", name, path, exc)
            return False
        return True

    def tail(self, name: str, lines: int = 50) -> builtins.list[str]:
        """The last ``lines`` lines the release wrote (reaching into ``NAME.log.1``
        when the live log was just rotated)."""
        found: builtins.list[str] = []
        for path in (self.log_path(name), self.old_log(name, 1)):
            if len(found) >= lines or not path.exists():
                break
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 64 * 1024))
                found = f.read().decode(errors="replace").splitlines() + found
        return found[-lines:]


def release_home(state_dir: Path, name: str) -> Path:
    """The ``BENTOML_HOME`` of release ``name``; every process it runs has it in its environment."""
    return Path(state_dir).absolute() / "runtime" / "homes" / _UNSAFE.sub("_", name)


def release_log(state_dir: Path, name: str) -> Path:
    """Where the output of release ``name`` goes (readable without a runtime)."""
    return Path(state_dir).absolute() / "runtime" / "logs" / (_UNSAFE.sub("_", name) + ".log")
