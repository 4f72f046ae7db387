"""The real-proxy router: HAProxy, started and supervised by mdc, driven
through its runtime API.

Owns a foreground HAProxy (master-worker mode) with one frontend and one
backend per model, each backend holding two servers, ``stable`` and
``canary``. Adding a model rewrites the config and reloads the master
(``SIGUSR2``); everything after that -- a release's address, its weight, a
server in or out of maintenance -- goes through the admin socket and takes
effect on the next request without a reload (FIELD-NOTES: 0.3-0.5 ms; the
gaining server's weight is raised before the losing one's is lowered). After
a reload the last configuration of every model is pushed again, since
runtime settings do not survive one.

Per-backend counters come from HAProxy's own request log, sent over UDP
syslog to a listener in this process: status code and active time of every
request, so the analysis reads the same :class:`~controller.adapters.router.embedded.BackendStats`
as with the embedded router (latency has HAProxy's millisecond resolution).
The ``X-MDC-Version`` override header works as with the embedded router;
mirroring, sticky users and previews (and their pairs) are not offered by
this router and are refused with an error rather than ignored.

The data plane outlives the controller here too: the master's pid is kept in
``STATE/haproxy/haproxy.pid`` and each model's frontend port and last split in
``STATE/haproxy/routes.json``; the split is written into the config itself, so a
reload serves what was set before it. A restarted controller adopts a master
that still runs on this state directory's config (it reloads it, with its own
log listener, rather than start a second HAProxy beside it), keeps every
model's port, and :meth:`HAProxyRouter.close` leaves HAProxy serving;
:meth:`HAProxyRouter.shutdown` stops it.

Called through :func:`controller.adapters.router.make_router` (``"haproxy"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from controller.adapters.router.supervised import process_alive
from controller.core.traffic import (
    BackendStats,
    Pair,
    PairingConfig,
    RouteConfig,
    Sample,
    SamplingConfig,
)
from controller.errors import PermanentError, Reason, TransientError

__all__ = ["HAProxyRouter"]

_LOG = re.compile(rb"mdc (\S+) (\S+) (-?\d+) (-?\d+)")
_NO_PREVIEW = (
    "the HAProxy router does not send traffic to a preview or pair its answers; "
    "use the embedded router"
)


class HAProxyRouter:
    """A :class:`~controller.adapters.router.base.Router` over a real HAProxy (module docstring)."""

    def __init__(self, state_dir: Path, binary: str = "haproxy", host: str = "127.0.0.1") -> None:
        found = shutil.which(binary)
        if found is None:
            raise PermanentError(
                f"{binary} is not installed (Debian package haproxy)", reason=Reason.PROXY_MISSING
            )
        self.binary = found
        self.host = host
        self.dir = Path(state_dir) / "haproxy"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_path = self.dir / "admin.sock"
        self.config_path = self.dir / "haproxy.cfg"
        self.models: dict[str, int] = {}  # model -> frontend port
        self.backends: dict[str, str] = {}  # backend name in HAProxy -> model
        self.configs: dict[str, RouteConfig] = {}
        self.stats: dict[str, dict[str, BackendStats]] = {}
        self.lock = threading.Lock()
        self.logs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.logs.bind((host, 0))
        self.logs.settimeout(0.2)
        self.log_port = self.logs.getsockname()[1]
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_logs, name="mdc-haproxy-log", daemon=True)
        self._reader.start()
        self.pid_path = self.dir / "haproxy.pid"
        self.table = self.dir / "routes.json"
        self.pid = self._running_master()
        self.adopted = self.pid is not None
        if self.adopted:
            self._restore()

    # -- config and process -------------------------------------------------------

    def _render(self) -> str:
        lines = [
            "global",
            f"  stats socket {self.socket_path} mode 600 level admin",
            f"  log {self.host}:{self.log_port} local0 info",
            "  nbthread 1",
            "defaults",
            "  mode http",
            "  log global",
            '  log-format "mdc %b %s %ST %Ta"',
            "  option http-keep-alive",
            "  http-reuse always",
            # a release stopped or moved behind a pooled connection must not fail a
            # request: buffer it, and retry on a fresh connection
            "  option http-buffer-request",
            "  retries 3",
            "  retry-on conn-failure empty-response response-timeout",
            "  timeout connect 5s",
            "  timeout client 60s",
            "  timeout server 60s",
        ]
        for i, (model, port) in enumerate(sorted(self.models.items())):
            backend = f"be_{i}"
            self.backends[backend] = model
            lines += [
                f"frontend fe_{i}",
                f"  bind {self.host}:{port}",
                f"  default_backend {backend}",
                f"backend {backend}",
                "  balance roundrobin",
                "  use-server canary if { req.hdr(x-mdc-version) -i canary }",
                "  use-server stable if { req.hdr(x-mdc-version) -i stable }",
                *_servers(self.configs.get(model, RouteConfig())),
            ]
        return "\n".join(lines) + "\n"

    def _backend(self, model: str) -> str:
        return next(b for b, m in self.backends.items() if m == model)

    def _start_or_reload(self) -> None:
        candidate = self.dir / "haproxy.cfg.new"
        candidate.write_text(self._render())
        check = subprocess.run(
            [self.binary, "-c", "-q", "-f", str(candidate)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:  # a broken config is never applied
            raise PermanentError(
                f"HAProxy refused the config: {check.stderr.strip()}",
                reason=Reason.PROXY_CONFIG_INVALID,
            )
        candidate.replace(self.config_path)
        self._save()
        if self.pid is None or not process_alive(self.pid):
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
            # master-worker, daemonized: the master is nobody's child and outlives
            # this controller; its pid is in the pid file once the launcher returns
            started = subprocess.run(
                [self.binary, "-W", "-D", "-f", str(self.config_path), "-p", str(self.pid_path)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                start_new_session=True,
                timeout=30,
                check=False,
            )
            deadline = time.monotonic() + 5  # the pid file may come just after the launcher
            self.pid = self._running_master()
            while started.returncode == 0 and self.pid is None and time.monotonic() < deadline:
                time.sleep(0.02)
                self.pid = self._running_master()
            if started.returncode != 0 or self.pid is None:
                raise TransientError(
                    f"HAProxy did not start: {started.stderr.strip()[-500:]}",
                    reason=Reason.PROXY_UNAVAILABLE,
                )
        else:
            os.kill(self.pid, signal.SIGUSR2)  # the master reloads its workers
        wanted = set(self.backends)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(_listening(self.host, p) for p in self.models.values()):
                try:
                    listed = set(self._command("show backend").split())
                except TransientError:
                    listed = set()
                if wanted <= listed:
                    break
            time.sleep(0.02)
        else:
            raise TransientError(
                "HAProxy did not come up within 10s", reason=Reason.PROXY_UNAVAILABLE
            )
        for model, config in self.configs.items():  # runtime settings do not survive a reload
            self._push(model, config)

    def _command(self, line: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.socket_path))
                s.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise TransientError(
                f"HAProxy admin socket: {exc}", reason=Reason.PROXY_UNAVAILABLE
            ) from None
        answer = b"".join(chunks).decode(errors="replace").strip()
        if (
            answer
            and not answer.startswith(("Name", "IP ", "#", "Build", "Weight"))
            and ("No such" in answer or "Require" in answer or "Unknown" in answer)
        ):
            raise PermanentError(
                f"HAProxy refused {line!r}: {answer}", reason=Reason.PROXY_COMMAND_FAILED
            )
        return answer

    # -- the Router protocol ------------------------------------------------------

    def add_model(self, model: str, port: int = 0) -> str:
        if model not in self.models:
            self.models[model] = port or _free_port(self.host)
            with self.lock:
                self.stats[model] = {"stable": BackendStats(), "canary": BackendStats()}
            self._start_or_reload()
        return f"http://{self.host}:{self.models[model]}"

    def configure(self, model: str, config: RouteConfig) -> None:
        if config.mirror or config.sticky:
            raise PermanentError(
                "the HAProxy router does not mirror traffic or pin users; use the embedded router",
                reason=Reason.ROUTER_FEATURE_UNSUPPORTED,
            )
        if config.preview is not None:
            raise PermanentError(_NO_PREVIEW, reason=Reason.ROUTER_FEATURE_UNSUPPORTED)
        if config.stable_more or config.canary_more:
            raise PermanentError(
                "the HAProxy router serves one replica per side; replicas: N needs the "
                "embedded router",
                reason=Reason.ROUTER_FEATURE_UNSUPPORTED,
            )
        if not 0 <= config.weight <= 100:
            raise ValueError(f"weight is a percentage: {config.weight}")
        self._push(model, config)
        if self.configs.get(model) != config:
            self.configs[model] = config
            self._save()

    def _push(self, model: str, config: RouteConfig) -> None:
        backend = self._backend(model)
        canary_weight = config.weight if config.canary else 0
        stable_weight = 100 - canary_weight if config.stable else 0
        wanted = {
            "stable": (config.stable, stable_weight),
            "canary": (config.canary, canary_weight),
        }
        # the gaining side first, so no burst of requests lands on one side only
        order = sorted(wanted, key=lambda s: -wanted[s][1])
        for server in order:
            address, weight = wanted[server]
            if address is None:
                continue
            host, port = address.rsplit(":", 1)
            self._command(f"set server {backend}/{server} addr {host} port {port}")
            self._command(f"set server {backend}/{server} weight {weight}")
            self._command(f"set server {backend}/{server} state ready")
        for server, (address, _) in wanted.items():
            if address is None:
                self._command(f"set server {backend}/{server} state maint")

    def snapshot(self, model: str) -> dict[str, BackendStats]:
        with self.lock:
            return {k: v.copy() for k, v in self.stats[model].items()}

    def sample(self, model: str, config: SamplingConfig | None) -> None:
        """HAProxy forwards bodies without showing them to mdc: no sampling."""
        if config is not None:
            raise PermanentError(
                f"{model}: the haproxy router cannot sample answers; "
                "monitor.sampling needs router: embedded",
                reason=Reason.SAMPLING_UNSUPPORTED,
            )

    def samples(self, model: str) -> list[Sample]:
        return []

    def pair(self, model: str, config: PairingConfig | None) -> None:
        """No previews here (see :meth:`configure`): nothing to pair."""
        if config is not None:
            raise PermanentError(
                f"{model}: {_NO_PREVIEW}", reason=Reason.ROUTER_FEATURE_UNSUPPORTED
            )

    def pairs(self, model: str) -> list[Pair]:
        return []

    def waiting(self, model: str) -> dict[str, float]:
        """Not told: HAProxy's runtime API gives session counts, not the age of the
        oldest request per server (a hung release shows only through ``in_flight``)."""
        return {}

    def in_flight(self, model: str) -> dict[str, int]:
        """Each server's current sessions (``scur`` of ``show stat``), by address."""
        backend = self._backend(model)
        config = self.configs.get(model, RouteConfig())
        rows = [line.split(",") for line in self._command("show stat").splitlines()]
        header = rows[0] if rows and rows[0] and rows[0][0].startswith("#") else []
        if "scur" not in header:
            return {}
        scur = header.index("scur")
        found: dict[str, int] = {}
        for row in rows[1:]:
            if len(row) > scur and row[0] == backend and row[1] in ("stable", "canary"):
                address = getattr(config, row[1])
                if address is not None:
                    found[address] = found.get(address, 0) + int(row[scur] or 0)
        return found

    def shutdown(self) -> None:
        """Stop HAProxy (its workers finish the requests in flight), then let go."""
        if self.pid is not None and process_alive(self.pid):
            deadline = time.monotonic() + 10
            asked = 0.0
            while process_alive(self.pid) and time.monotonic() < deadline:
                if time.monotonic() - asked >= 0.5:  # a master still starting its workers
                    asked = time.monotonic()  # can miss the signal: it is sent again
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGUSR1)  # soft stop: finish, then exit
                time.sleep(0.05)
            if process_alive(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        self.close()

    def close(self) -> None:
        """Let go: HAProxy keeps serving, and the next controller adopts it."""
        self._stop.set()
        self._reader.join(timeout=5)
        self.logs.close()

    # -- adoption -------------------------------------------------------------------

    def _running_master(self) -> int | None:
        """The pid of a master still running on this state directory's config."""
        try:
            pid = int(self.pid_path.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        if not process_alive(pid) or str(self.config_path).encode() not in cmdline:
            return None
        return pid

    def _restore(self) -> None:
        """Each model's port and split from the table: the adopted HAProxy keeps its
        frontends, and reloading it (with this controller's log listener) changes
        nothing a client sees."""
        try:
            rows = json.loads(self.table.read_text())
            for model, row in rows.items():
                self.models[model] = int(row["port"])
                config = row.get("config") or {}
                self.configs[model] = RouteConfig(
                    config.get("stable"), config.get("canary"), int(config.get("weight", 0))
                )
                with self.lock:
                    self.stats[model] = {"stable": BackendStats(), "canary": BackendStats()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.models.clear()
            self.configs.clear()
            raise TransientError(
                f"HAProxy runs (pid {self.pid}) but its route table {self.table} is unreadable:"
                f" {exc}; stop it (mdc down) to start afresh",
                reason=Reason.PROXY_UNAVAILABLE,
            ) from None
        if self.models:
            self._start_or_reload()  # its log lines come to this controller from now on

    def _save(self) -> None:
        rows = {
            model: {
                "port": port,
                "config": {
                    "stable": self.configs.get(model, RouteConfig()).stable,
                    "canary": self.configs.get(model, RouteConfig()).canary,
                    "weight": self.configs.get(model, RouteConfig()).weight,
                },
            }
            for model, port in sorted(self.models.items())
        }
        tmp = self.table.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(self.table)

    # -- counters from the request log ---------------------------------------------

    def _read_logs(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.logs.recv(65536)
            except (TimeoutError, OSError):
                continue
            match = _LOG.search(data)
            if match is None:
                continue
            backend, server, status, active = (m.decode() for m in match.groups())
            model = self.backends.get(backend)
            if model is None or server not in ("stable", "canary"):
                continue
            code = int(status) if int(status) > 0 else 502
            seconds = (max(int(active), 0) + 0.5) / 1000  # HAProxy counts whole milliseconds
            with self.lock:
                self.stats[model][server].observe(code, seconds)


def _servers(config: RouteConfig) -> list[str]:
    """The two server lines of a backend, set as ``config`` splits the traffic (a
    reload then keeps serving what was set at run time)."""
    canary_weight = config.weight if config.canary else 0
    lines = []
    for name, address, weight in (
        ("stable", config.stable, 100 - canary_weight if config.stable else 0),
        ("canary", config.canary, canary_weight),
    ):
        if address is None:
            lines.append(f"  server {name} 127.0.0.1:9 weight 0 disabled")
        else:
            lines.append(f"  server {name} {address} weight {weight}")
    return lines


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False
