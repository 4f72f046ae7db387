"""The router's own process: the embedded router, serving every model's route,
in a process the controller starts, configures over loopback and adopts after a
restart -- so traffic keeps flowing while the controller is stopped, killed,
upgraded or restarting (the data plane outlives the control plane).

Owns, in the router process (``python -m controller.adapters.router.control
--dir STATE/router``):

* an :class:`~controller.adapters.router.embedded.EmbeddedRouter` (the routes,
  the split, the counters, the admin ``/metrics`` port);
* the route table on disk (``routes.json``: each model's port, split (its
  preview too), sampling and pairing rules, written atomically after every
  change) from which a router restarted by its supervisor serves the same
  routes on the same ports at once, before any controller speaks to it;
* the control API on a loopback port, JSON over HTTP, each call but
  ``/healthz`` carrying the bearer token from ``token`` (mode 0600), so other
  users of the machine cannot move traffic::

      GET  /healthz                        {"pid": N}
      GET  /routes                         {model: {"url", "port", "config", "sampling",
                                                    "pairing"}}
      PUT  /routes/MODEL        {"port"}   {"url"}        open a route (idempotent)
      PUT  /routes/MODEL/config RouteConfig               set the split (and preview)
      PUT  /routes/MODEL/sampling SamplingConfig | null
      POST /routes/MODEL/samples           [Sample...]    drain the samples
      PUT  /routes/MODEL/pairing PairingConfig | null
      POST /routes/MODEL/pairs             [Pair...]      drain the preview's pairs
      GET  /routes/MODEL/stats             {backend: BackendStats}
      GET  /routes/MODEL/in-flight         {backend: N}
      GET  /routes/MODEL/waiting           {backend: seconds}
      GET  /metrics                        the Prometheus text of every route

* ``router.json`` (pid, control and admin URLs, start time), written once the
  ports listen: the file the controller reads to adopt this process;
* its own log (``router.log``), rotated by size.

SIGTERM and SIGINT stop it after the requests in flight are answered (at most
a few seconds). The JSON forms of the traffic records (:func:`config_to_json`
and the rest) are shared with the client, :mod:`controller.adapters.router.supervised`.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from controller.adapters.router.embedded import EmbeddedRouter
from controller.core.traffic import (
    BackendStats,
    Pair,
    PairingConfig,
    RouteConfig,
    Sample,
    SamplingConfig,
)

__all__ = [
    "RouterService",
    "config_from_json",
    "config_to_json",
    "main",
    "pair_from_json",
    "pair_to_json",
    "pairing_from_json",
    "pairing_to_json",
    "sample_from_json",
    "sampling_from_json",
    "sampling_to_json",
    "stats_from_json",
]

log = logging.getLogger("mdc.router")

#: How long a stop waits for the requests in flight.
DRAIN_SECONDS = 5.0
#: The largest control request body read.
MAX_CONTROL_BODY = 1 << 20
LOG_BYTES, LOG_BACKUPS = 5 * 2**20, 3


# -- the JSON forms ---------------------------------------------------------------


def config_to_json(config: RouteConfig) -> dict[str, Any]:
    return {
        "stable": config.stable,
        "canary": config.canary,
        "weight": config.weight,
        "mirror": config.mirror,
        "sticky": config.sticky,
        "stableMore": list(config.stable_more),
        "canaryMore": list(config.canary_more),
        "preview": config.preview,
        "previewShare": config.preview_share,
    }


def config_from_json(data: Mapping[str, Any]) -> RouteConfig:
    def address(key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be a string or null")
        return value

    sticky = data.get("sticky")
    if sticky is not None and not isinstance(sticky, str):
        raise ValueError("sticky must be a string or null")

    def more(key: str) -> tuple[str, ...]:
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise ValueError(f"{key} must be a list of addresses")
        return tuple(value)

    return RouteConfig(
        address("stable"),
        address("canary"),
        int(data.get("weight", 0)),
        int(data.get("mirror", 0)),
        sticky,
        more("stableMore"),
        more("canaryMore"),
        address("preview"),  # absent from the files of older versions: none
        int(data.get("previewShare", 0)),
    )


def sampling_to_json(sampling: SamplingConfig | None) -> dict[str, Any] | None:
    if sampling is None:
        return None
    return {"share": sampling.share, "sensitive": sorted(sampling.sensitive)}


def sampling_from_json(data: Mapping[str, Any] | None) -> SamplingConfig | None:
    if data is None:
        return None
    return SamplingConfig(float(data["share"]), frozenset(str(s) for s in data["sensitive"]))


def pairing_to_json(pairing: PairingConfig | None) -> dict[str, Any] | None:
    if pairing is None:
        return None
    return {"sensitive": sorted(pairing.sensitive)}


def pairing_from_json(data: Mapping[str, Any] | None) -> PairingConfig | None:
    if data is None:
        return None
    sensitive = data.get("sensitive") or []
    if not isinstance(sensitive, list):
        raise ValueError("sensitive must be a list of keys")
    return PairingConfig(frozenset(str(s) for s in sensitive))


def stats_to_json(stats: BackendStats) -> dict[str, Any]:
    return {
        "codes": {str(code): n for code, n in stats.codes.items()},
        "buckets": stats.buckets,
        "seconds": stats.seconds,
    }


def stats_from_json(data: Mapping[str, Any]) -> BackendStats:
    return BackendStats(
        {int(code): int(n) for code, n in data["codes"].items()},
        [int(n) for n in data["buckets"]],
        float(data["seconds"]),
    )


def sample_to_json(sample: Sample) -> dict[str, Any]:
    return {
        "at": sample.at,
        "backend": sample.backend,
        "status": sample.status,
        "seconds": sample.seconds,
        "request": sample.request,
        "response": sample.response,
        "size": sample.size,
    }


def sample_from_json(data: Mapping[str, Any]) -> Sample:
    return Sample(
        float(data["at"]),
        str(data["backend"]),
        int(data["status"]),
        float(data["seconds"]),
        data["request"],
        data["response"],
        int(data["size"]),
    )


def pair_to_json(pair: Pair) -> dict[str, Any]:
    return {
        "at": pair.at,
        "request": pair.request,
        "stableStatus": pair.stable_status,
        "stableSeconds": pair.stable_seconds,
        "stableAnswer": pair.stable_answer,
        "previewStatus": pair.preview_status,
        "previewSeconds": pair.preview_seconds,
        "previewAnswer": pair.preview_answer,
        "size": pair.size,
    }


def pair_from_json(data: Mapping[str, Any]) -> Pair:
    return Pair(
        float(data["at"]),
        data["request"],
        int(data["stableStatus"]),
        float(data["stableSeconds"]),
        data["stableAnswer"],
        int(data["previewStatus"]),
        float(data["previewSeconds"]),
        data["previewAnswer"],
        int(data["size"]),
    )


def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    """``text`` into ``path``, all or nothing (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# -- the service ---------------------------------------------------------------------


class RouterService:
    """The router process's state: the engine, the route table and its file."""

    def __init__(self, directory: Path, host: str = "127.0.0.1") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.engine = EmbeddedRouter(host=host)
        self.lock = threading.Lock()
        self.ports: dict[str, int] = {}
        self.configs: dict[str, RouteConfig] = {}
        self.sampling: dict[str, SamplingConfig | None] = {}
        self.pairing: dict[str, PairingConfig | None] = {}
        self.save_error: str | None = None  # why routes.json could not be written, while so
        self._restore()

    @property
    def table(self) -> Path:
        return self.dir / "routes.json"

    def _restore(self) -> None:
        """Serve the routes of the table at once: a restarted router carries on."""
        if not self.table.exists():
            return
        try:
            rows = json.loads(self.table.read_text())
        except (OSError, ValueError) as exc:
            log.error("route table %s unreadable (%s): starting empty", self.table, exc)
            return
        for model, row in rows.items():
            try:
                self.open(model, int(row["port"]))
                self.configure(model, config_from_json(row["config"]))
                self.set_sampling(model, sampling_from_json(row.get("sampling")))
                self.set_pairing(model, pairing_from_json(row.get("pairing")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("route %s not restored: %s", model, exc)

    def _save(self) -> None:
        rows = {
            model: {
                "port": port,
                "config": config_to_json(self.configs.get(model, RouteConfig())),
                "sampling": sampling_to_json(self.sampling.get(model)),
                "pairing": pairing_to_json(self.pairing.get(model)),
            }
            for model, port in sorted(self.ports.items())
        }
        try:
            write_atomically(self.table, json.dumps(rows, indent=2))
        except OSError as exc:  # a full disk: the route is set all the same (in memory)
            if str(exc) != self.save_error:
                log.error(
                    "route table %s not saved (saved with the next change): %s", self.table, exc
                )
            self.save_error = str(exc)
            return
        self.save_error = None

    def open(self, model: str, port: int) -> str:
        with self.lock:
            url = self.engine.add_model(model, port)
            self.ports[model] = int(url.rsplit(":", 1)[1])
            self._save()
        log.info("route %s open at %s", model, url)
        return url

    def configure(self, model: str, config: RouteConfig) -> None:
        with self.lock:
            self.engine.configure(model, config)
            if self.configs.get(model) != config:
                self.configs[model] = config
                self._save()
                log.info(
                    "route %s: stable %s, canary %s at %d%%, preview %s at %d%%",
                    model,
                    config.stable,
                    config.canary,
                    config.weight,
                    config.preview,
                    config.preview_share,
                )

    def set_sampling(self, model: str, sampling: SamplingConfig | None) -> None:
        with self.lock:
            self.engine.sample(model, sampling)
            self.sampling[model] = sampling
            self._save()

    def set_pairing(self, model: str, pairing: PairingConfig | None) -> None:
        with self.lock:
            self.engine.pair(model, pairing)
            self.pairing[model] = pairing
            self._save()

    def routes(self) -> dict[str, Any]:
        with self.lock:
            return {
                model: {
                    "url": self.engine.models[model].url,
                    "port": port,
                    "config": config_to_json(self.configs.get(model, RouteConfig())),
                    "sampling": sampling_to_json(self.sampling.get(model)),
                    "pairing": pairing_to_json(self.pairing.get(model)),
                }
                for model, port in self.ports.items()
            }

    def drain(self, seconds: float) -> None:
        """Wait (at most ``seconds``) for the requests in flight."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            busy = sum(sum(self.engine.in_flight(m).values()) for m in list(self.ports))
            if not busy:
                return
            time.sleep(0.02)

    def close(self) -> None:
        self.engine.close()


class _Handler(BaseHTTPRequestHandler):
    service: RouterService
    token: bytes
    raw: bytes = b""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: " + format, *args)

    def _reply(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        return hmac.compare_digest(given, self.token)

    def _read(self) -> bytes:
        """The request's body, read whole whether or not the call uses it (a body
        left unread would be taken for the next request on the connection)."""
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_CONTROL_BODY:
            self.close_connection = True
            raise ValueError("bad or too large Content-Length")
        return self.rfile.read(length)

    def _body(self) -> Any:
        return json.loads(self.raw or b"null")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            self.raw = self._read()
        except ValueError as exc:
            self._reply(413, {"error": str(exc)})
            return
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        if parts == ["healthz"]:
            self._reply(200, {"pid": os.getpid()})
            return
        if not self._authorized():
            self._reply(401, {"error": "a bearer token is required"})
            return
        try:
            self._route(method, parts)
        except KeyError as exc:
            self._reply(404, {"error": f"no route {exc}"})
        except (ValueError, TypeError) as exc:
            self._reply(400, {"error": str(exc)})
        except OSError as exc:
            self._reply(409, {"error": str(exc)})
        except Exception as exc:  # a bug here must not stop the router
            log.exception("control: %s %s", method, self.path)
            self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _route(self, method: str, parts: list[str]) -> None:
        service = self.service
        if method == "GET" and parts == ["metrics"]:
            self._reply(200, service.engine.metrics_text(), "text/plain; version=0.0.4")
        elif method == "GET" and parts == ["routes"]:
            self._reply(200, service.routes())
        elif len(parts) == 2 and parts[0] == "routes" and method == "PUT":
            body = self._body() or {}
            self._reply(200, {"url": service.open(parts[1], int(body.get("port", 0)))})
        elif len(parts) == 3 and parts[0] == "routes":
            model, what = parts[1], parts[2]
            if model not in service.ports:
                raise KeyError(model)
            if method == "PUT" and what == "config":
                service.configure(model, config_from_json(self._body()))
                self._reply(200, {"ok": True})
            elif method == "PUT" and what == "sampling":
                service.set_sampling(model, sampling_from_json(self._body()))
                self._reply(200, {"ok": True})
            elif method == "POST" and what == "samples":
                samples = service.engine.samples(model)
                self._reply(200, [sample_to_json(s) for s in samples])
            elif method == "PUT" and what == "pairing":
                service.set_pairing(model, pairing_from_json(self._body()))
                self._reply(200, {"ok": True})
            elif method == "POST" and what == "pairs":
                pairs = service.engine.pairs(model)
                self._reply(200, [pair_to_json(p) for p in pairs])
            elif method == "GET" and what == "stats":
                stats = service.engine.snapshot(model)
                self._reply(200, {k: stats_to_json(v) for k, v in stats.items()})
            elif method == "GET" and what == "in-flight":
                self._reply(200, service.engine.in_flight(model))
            elif method == "GET" and what == "waiting":
                self._reply(200, service.engine.waiting(model))
            else:
                self._reply(404, {"error": f"no {method} /{'/'.join(parts)}"})
        else:
            self._reply(404, {"error": f"no {method} /{'/'.join(parts)}"})


def _token(directory: Path) -> bytes:
    path = directory / "token"
    if not path.exists():
        write_atomically(path, os.urandom(24).hex(), mode=0o600)
    return path.read_text().strip().encode()


def serve(directory: Path, host: str = "127.0.0.1", control_port: int = 0) -> int:
    """Run the router until SIGTERM or SIGINT; the exit code."""
    service = RouterService(directory, host)
    handler = type("Handler", (_Handler,), {"service": service, "token": _token(directory)})
    server = ThreadingHTTPServer((host, control_port), handler)
    server.daemon_threads = True
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    thread = threading.Thread(target=server.serve_forever, name="mdc-router-control", daemon=True)
    thread.start()
    info = {
        "pid": os.getpid(),
        "control": f"http://{host}:{server.server_address[1]}",
        "admin": service.engine.admin_url,
        "started": time.time(),
    }
    write_atomically(directory / "router.json", json.dumps(info, indent=2))
    log.info(
        "router %d serving %d routes; control %s", os.getpid(), len(service.ports), info["control"]
    )
    stopping.wait()
    log.info("router %d stopping: draining requests in flight", os.getpid())
    server.shutdown()
    service.drain(DRAIN_SECONDS)
    service.close()
    with contextlib.suppress(OSError):
        current = json.loads((directory / "router.json").read_text())
        if current.get("pid") == os.getpid():
            (directory / "router.json").unlink()
    log.info("router %d stopped", os.getpid())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.adapters.router.control")
    parser.add_argument("--dir", required=True, help="the router's directory (STATE/router)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument(
        "--detach",
        action="store_true",
        help="fork, and let the parent exit: the router is nobody's child (no zombie, "
        "nothing to reap when the controller that started it is gone)",
    )
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    if args.detach and os.fork() > 0:
        os._exit(0)
    handler = logging.handlers.RotatingFileHandler(
        directory / "router.log", maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return serve(directory, args.host, args.control_port)


if __name__ == "__main__":
    sys.exit(main())
