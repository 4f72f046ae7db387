"""Releases on a Ray cluster: each one is ``bentoml serve`` inside a Ray actor on
the node the GPU ledger chose, holding the share of GPUs the ledger gave it.

Owns :class:`RayRuntime`, the second implementation of the runtime the
reconciler and the rollout driver use (``start``, ``stop``, ``tick``,
``releases``): readiness, real-request probes, crash restarts and the process
table are :class:`~controller.adapters.runtime.local.LocalRuntime`'s; what differs is where
a release runs. Each pool node is a Ray node that carries the custom resource
``mdc-node:NAME`` (``ray start --resources '{"mdc-node:gpu-node-a": 1}'``); the
actor is pinned there (node affinity, never soft) and asks Ray for the same
GPU share the ledger booked, so Ray's accounting matches the ledger and Ray
never places something else on those GPUs; ``CUDA_VISIBLE_DEVICES`` comes from
the ledger (by UUID). Bentos reach the node without a shared filesystem: the
runtime exports the bento once, puts the archive in Ray's object store, and
the actor imports it into its own BentoML home on that node. The actor
reports its endpoint (the node's address and a free port) for the router.

A release whose actor died with its node is marked failed ("node lost"),
never restarted onto a dead node; the reconciler places it again.

Actors are detached and named ``mdc:RELEASE`` in the controller's namespace,
so releases keep serving while the controller restarts; the next controller
reads its process table and adopts each release whose actor (found by that
name) still runs its server (:meth:`RayRuntime._still_running`).

:meth:`RayRuntime.cluster_nodes` is the cluster as a pool with
``spec.cluster`` sees it: each live node's name, labels and declared GPUs,
and its NVML reading from a task on that node (read once per node).

Called by ``mdc run --runtime ray`` (:func:`make_runtime`) and the Ray
integration tests. Needs the optional ``ray`` extra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from controller.adapters.runtime.base import Release, ReleaseSpec, State
from controller.adapters.runtime.local import LocalRuntime
from controller.core.environment import bentoml_env
from controller.core.inventory import GPU, LABEL_NODE, ClusterNode, real_uuid
from controller.errors import PermanentError, Reason, TransientError

__all__ = ["NODE_RESOURCE", "RayRuntime", "node_ids", "node_name"]

log = logging.getLogger(__name__)

_SERVE = (sys.executable, "-m", "bentoml", "serve")

#: How Ray says an actor went with its node.
_NODE_DIED = "node has died"

#: The custom resource that names a pool node on its Ray node: ``mdc-node:NAME``.
NODE_RESOURCE = "mdc-node:"


def node_name(node: Mapping[str, Any]) -> str:
    """A Ray node's pool name: its ``mdc-node:NAME`` resource, else its
    ``mdc.dev/node`` label, else its host name and the start of its id."""
    for resource in node.get("Resources", {}):
        if resource.startswith(NODE_RESOURCE):
            return str(resource[len(NODE_RESOURCE) :])
    label = node.get("Labels", {}).get(LABEL_NODE)
    if label:
        return str(label)
    return f"{node.get('NodeManagerHostname', 'node')}-{str(node['NodeID'])[:8]}"


def _live_nodes(ray: Any) -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]


def node_ids(ray: Any) -> dict[str, str]:
    """Pool node name -> Ray node id, for the live nodes."""
    return {node_name(node): node["NodeID"] for node in _live_nodes(ray)}


def _no_nvml(node: str) -> list[GPU]:
    raise TransientError(f"node {node}: no NVML reader was given", reason=Reason.NVML_UNAVAILABLE)


def _nvml_reader(ray: Any, read: Callable[[str], list[GPU]]) -> Any:
    """A task that reads the GPUs of the node it runs on with ``read`` (NVML, given
    by the wiring), or says why not."""

    def read_gpus(name: str) -> list[dict[str, Any]] | str:
        try:
            return [asdict(gpu) for gpu in read(name)]
        except TransientError as exc:
            return exc.message

    return ray.remote(num_cpus=0, max_retries=0)(read_gpus)


def _normal_priority(pid: int) -> None:
    """Ray runs its workers niced (15); a model server must not inherit that, or it
    starves behind everything else on the node (start-up went from 5 s to 80 s here)."""
    with contextlib.suppress(OSError):  # not allowed to raise it here: keep Ray's
        os.setpriority(os.PRIO_PROCESS, pid, 0)


def _actor_class(ray: Any) -> Any:
    """The actor, defined once Ray is imported (it is an optional dependency)."""

    @ray.remote(num_cpus=0, max_restarts=0, lifetime="detached")
    class ReleaseActor:
        """``bentoml serve`` of one release, on this node."""

        def __init__(self, name: str) -> None:
            self.name = name
            self.proc: subprocess.Popen[bytes] | None = None
            self.placement: dict[str, Any] = {}
            base = Path(os.environ.get("MDC_RAY_HOME", "/tmp/mdc-ray"))
            self.home = base / name.replace("/", "_") / str(os.getpid())
            self.log = self.home / "serve.log"

        def start(self, bento: str, archive: bytes, env: dict[str, str], port: int) -> Any:
            self.home.mkdir(parents=True, exist_ok=True)
            package = self.home / "release.bento"
            package.write_bytes(archive)
            environment = bentoml_env(self.home / "bentoml", env)
            began = time.monotonic()
            importer = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "import", str(package)],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            _normal_priority(importer.pid)
            output, _ = importer.communicate(timeout=120)
            if importer.returncode != 0:
                raise RuntimeError(f"bentoml import failed: {output.decode()[-500:]}")
            if not port:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = int(s.getsockname()[1])
            out = self.log.open("ab")
            self.proc = subprocess.Popen(
                [*_SERVE, bento, "--host", "0.0.0.0", "--port", str(port)],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            out.close()
            _normal_priority(self.proc.pid)
            self.placement = {
                "host": ray.util.get_node_ip_address(),
                "port": port,
                "pid": self.proc.pid,
                "node": ray.get_runtime_context().get_node_id(),
                "cuda": environment.get("CUDA_VISIBLE_DEVICES"),
                "import_seconds": round(time.monotonic() - began, 3),
            }
            return self.placement

        def alive(self) -> bool:
            return self.proc is not None and self.proc.poll() is None

        def where(self) -> dict[str, Any]:
            return dict(self.placement)

        def stop(self, drain: float) -> None:
            if self.proc is None or self.proc.poll() is not None:
                return
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=drain)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

        def tail(self, lines: int) -> list[str]:
            if not self.log.exists():
                return []
            return self.log.read_text(errors="replace").splitlines()[-lines:]

    return ReleaseActor


class RayRuntime(LocalRuntime):
    """Releases as Ray actors (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        bento_home: Path,
        *,
        address: str,
        namespace: str = "mdc",
        nvml: Callable[[str], list[GPU]] | None = None,
        clock: Callable[[], float] = time.time,
        call_timeout: float = 30.0,
    ) -> None:
        import ray  # noqa: PLC0415 - optional dependency

        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        self.namespace = namespace
        self.actor_class = _actor_class(ray)
        self.read_gpus = _nvml_reader(ray, nvml or _no_nvml)
        self.nvml: dict[str, tuple[GPU, ...] | str] = {}  # Ray node id -> reading
        self.actors: dict[str, Any] = {}
        #: release -> what its actor reported: host, port, pid, Ray node id, CUDA_VISIBLE_DEVICES
        self.placements: dict[str, dict[str, Any]] = {}
        self.archives: dict[str, Any] = {}  # bento tag -> object ref of its exported archive
        self.call_timeout = call_timeout
        super().__init__(state_dir, bento_home, clock=clock)

    # -- where releases run ---------------------------------------------------------------

    @staticmethod
    def actor_name(release: str) -> str:
        return f"mdc:{release}"

    def _named_actor(self, release: str) -> Any:
        try:
            return self.ray.get_actor(self.actor_name(release), namespace=self.namespace)
        except ValueError:
            return None

    def _still_running(self, release: Release) -> bool:
        """After a controller restart: adopt the release's actor when it and its
        server still run (detached actors outlive the controller)."""
        actor = self._named_actor(release.spec.name)
        if actor is None:
            return False
        try:
            alive = bool(self.ray.get(actor.alive.remote(), timeout=self.call_timeout))
            where = self.ray.get(actor.where.remote(), timeout=self.call_timeout) if alive else {}
        except Exception:
            alive = False
        if not alive:
            return False
        self.actors[release.spec.name] = actor
        self.placements[release.spec.name] = dict(where)
        return True

    def _clear_leftovers(self, release: Release) -> int:
        actor = self._named_actor(release.spec.name)
        if actor is None:
            return 0
        self._cleanup_actor(actor)
        return 1

    def _cleanup_actor(self, actor: Any) -> None:
        try:
            self.ray.get(actor.stop.remote(2.0), timeout=self.call_timeout)
        except Exception:
            log.debug("stop on a dead actor")
        with contextlib.suppress(Exception):
            self.ray.kill(actor)

    # -- the cluster, as pools see it ----------------------------------------------------

    def cluster_nodes(self) -> list[ClusterNode]:
        """Every live node: its name, labels, declared GPUs and NVML reading (read
        once per node, by a task pinned to it)."""
        from ray.util.scheduling_strategies import (  # noqa: PLC0415
            NodeAffinitySchedulingStrategy,
        )

        live = _live_nodes(self.ray)
        pending: dict[str, Any] = {}
        for node in live:
            if node["NodeID"] not in self.nvml:
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                pending[node["NodeID"]] = self.read_gpus.options(
                    scheduling_strategy=strategy
                ).remote(node_name(node))
        for node_id, ref in pending.items():
            try:
                reading = self.ray.get(ref, timeout=self.call_timeout)
            except Exception as exc:  # no answer: the node's declared GPUs, from now on
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref, force=True)
                log.warning("NVML on Ray node %s: %s", node_id[:12], exc)
                reading = f"the NVML task did not answer ({type(exc).__name__})"
            self.nvml[node_id] = (
                reading if isinstance(reading, str) else tuple(GPU(**gpu) for gpu in reading)
            )
        gone = set(self.nvml) - {node["NodeID"] for node in live}
        for node_id in gone:
            del self.nvml[node_id]
        return [
            ClusterNode(
                node_name(node),
                dict(node.get("Labels", {})),
                int(node.get("Resources", {}).get("GPU", 0)),
                self.nvml.get(node["NodeID"], "NVML was not read there yet"),
            )
            for node in live
        ]

    def _archive(self, bento: str) -> Any:
        if bento not in self.archives:
            package = self.dir / "exports" / f"{bento.replace(':', '-')}.bento"
            package.parent.mkdir(parents=True, exist_ok=True)
            if not package.exists():
                done = subprocess.run(
                    [sys.executable, "-m", "bentoml", "export", bento, str(package)],
                    env=bentoml_env(self.bento_home),
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=300,
                )
                if done.returncode != 0:
                    raise PermanentError(
                        f"bentoml export {bento} failed: {done.stderr.strip()[-500:]}",
                        reason=Reason.EXPORT_FAILED,
                    )
            self.archives[bento] = self.ray.put(package.read_bytes())
        return self.archives[bento]

    def _spawn(self, spec: ReleaseSpec, crashes: int) -> Release:
        from ray.util.scheduling_strategies import (  # noqa: PLC0415
            NodeAffinitySchedulingStrategy,
        )

        nodes = node_ids(self.ray)
        if spec.node is None or spec.node not in nodes:
            raise TransientError(
                f"{spec.name}: node {spec.node!r} is not in the Ray cluster "
                f"(nodes: {', '.join(sorted(nodes)) or 'none'})",
                reason=Reason.NODE_UNAVAILABLE,
                retry_after=10,
            )
        stale = self._named_actor(spec.name)
        if stale is not None:  # a restart: the old actor's server is gone
            self._cleanup_actor(stale)
        actor = self.actor_class.options(
            num_gpus=spec.gpu_share,
            scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[spec.node], soft=False),
            name=self.actor_name(spec.name),
            namespace=self.namespace,
        ).remote(spec.name)
        env = dict(spec.env)
        visible = env.get("CUDA_VISIBLE_DEVICES", "")
        if visible and not all(real_uuid(u) for u in visible.split(",")):
            del env["CUDA_VISIBLE_DEVICES"]  # made-up UUIDs of declared GPUs: Ray's choice
        try:
            where = self.ray.get(
                actor.start.remote(spec.bento, self._archive(spec.bento), env, spec.port or 0),
                timeout=self.call_timeout + 120,
            )
        except Exception as exc:
            self.ray.kill(actor)
            raise TransientError(
                f"{spec.name}: the actor on {spec.node} did not start: {exc}",
                reason=Reason.ACTOR_FAILED,
            ) from None
        self.actors[spec.name] = actor
        self.placements[spec.name] = dict(where)
        now = self.clock()
        release = Release(
            spec,
            int(where["port"]),
            int(where["pid"]),
            State.STARTING,
            now,
            "",
            crashes,
            now,
            host=str(where["host"]),
        )
        self.releases[spec.name] = release
        log.info(
            "%s on Ray node %s (%s) at %s, CUDA_VISIBLE_DEVICES=%s",
            spec.name,
            spec.node,
            str(where["node"])[:12],
            release.address,
            where.get("cuda"),
        )
        self._save()
        return release

    def _node_alive(self, r: Release) -> bool:
        return r.spec.node in node_ids(self.ray)

    def _alive(self, release: Release) -> bool:
        actor = self.actors.get(release.spec.name)
        if actor is None:
            return False
        try:
            return bool(self.ray.get(actor.alive.remote(), timeout=self.call_timeout))
        except Exception:
            return False

    def _tick_one(self, r: Release, now: float) -> Release:
        if r.state not in (State.STOPPED, State.FAILED) and not self._node_alive(r):
            return self._lost(r, now, f"{r.spec.node} left the cluster")
        try:
            return super()._tick_one(r, now)
        except TransientError as exc:  # a restart that could not start its actor
            if _NODE_DIED in exc.message or not self._node_alive(r):
                return self._lost(r, now, f"{r.spec.node} died")
            crashes = r.crashes + 1
            delay = min(300.0, 2.0**crashes)
            crashed = self._set(r, State.CRASHED, now, exc.message, "Crashed")
            return replace(crashed, pid=None, crashes=crashes, restart_at=now + delay)

    def _lost(self, r: Release, now: float, why: str) -> Release:
        """Its node is gone: failed for good, never restarted onto a dead node."""
        actor = self.actors.pop(r.spec.name, None)
        if actor is not None:  # dead with its node; killed all the same, its name freed
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        return replace(self._set(r, State.FAILED, now, f"node lost: {why}", "Failed"), pid=None)

    def _cleanup(self, r: Release) -> None:
        actor = self.actors.pop(r.spec.name, None)
        if actor is not None:
            self._cleanup_actor(actor)

    def _exit_reason(self, r: Release) -> str:
        last = next((line for line in reversed(self.tail(r.spec.name, 5)) if line.strip()), "")
        return last or "the actor or its server is gone"

    def stop(self, name: str, drain: float = 10.0) -> Release | None:
        release = self.releases.get(name)
        if release is None:
            return None
        actor = self.actors.pop(name, None)
        if actor is not None:
            try:
                self.ray.get(actor.stop.remote(drain), timeout=drain + self.call_timeout)
            except Exception:
                log.debug("%s: its actor was already gone", name)
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        stopped = replace(
            release, state=State.STOPPED, since=self.clock(), pid=None, reason="stopped"
        )
        self.releases[name] = stopped
        self._save()
        return stopped

    def tail(self, name: str, lines: int = 50) -> list[str]:
        actor = self.actors.get(name)
        if actor is None:
            return []
        try:
            return list(self.ray.get(actor.tail.remote(lines), timeout=self.call_timeout))
        except Exception:
            return []
