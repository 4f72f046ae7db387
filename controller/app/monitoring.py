"""The running versions after promotion, as the controller watches them each pass.

Owns :class:`Monitoring`: one :class:`~controller.core.monitor.ModelMonitor` per
model (the pure judge), fed once a pass with the router's counters of the
stable backend, the router's samples (drained into the feedback files,
:mod:`controller.adapters.feedback`, and read for the drift watch) and, where an
objective needs it and this machine's NVML can be read, the reading of the
GPUs the stable holds. It also keeps the hourly and daily rollups until their
period closes and then commits them, every model's in one commit, to
``monitor/MODEL.yaml`` on the status branch.

What a model's status file records (:meth:`Monitoring.record`) changes only on
a breach, a recovery or drift; the reconciler commits it and the reporter posts
it. After a controller restart, breaches recorded in the status file hold until
they recover (:meth:`~controller.core.monitor.ModelMonitor.restore`).

Called by :class:`controller.app.reconciler.Reconciler` (``_watch``, ``_record``,
``_prune``) and the daemon's ``/api/monitor``; tested end to end in
``tests/e2e/test_monitor.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.feedback import FeedbackStore
from controller.adapters.git.status_branch import StatusBranch
from controller.adapters.router.base import Router
from controller.adapters.runtime.base import ReleaseSpec
from controller.core.allocation import Allocation
from controller.core.drift import predictions
from controller.core.inventory import GPU
from controller.core.monitor import (
    DAYS_KEPT,
    HOURS_KEPT,
    GPUReading,
    ModelMonitor,
    Rollup,
    default_objectives,
)
from controller.core.status import Condition, ModelStatus
from controller.core.timestamps import iso
from controller.core.traffic import BackendStats, Sample, SamplingConfig
from controller.errors import ConditionType, MdcError
from controller.spec.kinds import Model, MonitorMetric, RolloutPolicy

__all__ = ["Monitoring"]

log = logging.getLogger(__name__)

_GPU_METRICS = (MonitorMetric.GPU_MEMORY_HEADROOM, MonitorMetric.GPU_UTILIZATION)


class Monitoring:
    """Every model's monitor, sampling and rollups (see the module docstring)."""

    def __init__(
        self,
        router: Router,
        status: StatusBranch,
        state_dir: Path,
        *,
        nvml: Callable[[str], list[GPU]] | None = None,
        node: str | None = None,
    ) -> None:
        self.router = router
        self.status = status
        self.nvml, self.node = nvml, node
        self.monitors: dict[str, ModelMonitor] = {}  # model -> its running version's monitor
        self.feedback = FeedbackStore(Path(state_dir) / "feedback")
        self.sampling: dict[str, SamplingConfig | None] = {}  # model -> what the router does
        self.refused: dict[str, MdcError] = {}  # model -> why the router cannot sample it
        self.rollups: list[Rollup] = []  # closed, not yet committed
        self._docs: dict[str, dict[str, Any]] = {}  # model -> monitor/MODEL.yaml

    # -- once a pass, per running stable ------------------------------------------------

    def watch(  # noqa: PLR0917
        self,
        model: Model,
        policy: RolloutPolicy | None,
        stable: ReleaseSpec,
        canary: ReleaseSpec | None,
        allocation: Allocation | None,
        recorded: ModelStatus | None,
        now: float,
    ) -> tuple[list[tuple[str, str]], list[Condition]]:
        """Judge ``model``'s running ``stable`` release; the changes people act on
        (as history events) and conditions to show."""
        name = model.name
        objectives = default_objectives(model.monitor, policy)
        monitor = self.monitors.get(name)
        if monitor is None:
            monitor = ModelMonitor(
                name, stable.version, stable.name, model.monitor, objectives, now
            )
            before = recorded.stable if recorded is not None else None
            if recorded is not None and recorded.monitor and before and before.name == stable.name:
                monitor.restore(recorded.monitor)  # a restart: what was breached still is
            self.monitors[name] = monitor
        elif monitor.release != stable.name:
            self._file_leftovers(model, monitor)
            monitor.switch(stable.version, stable.name, now)
        monitor.reconfigure(model.monitor, objectives, now)
        conditions: list[Condition] = []
        values = self._sampled(model, stable, canary, conditions)
        stats = self.router.snapshot(name).get("stable") or BackendStats()
        share = allocation.gpus if allocation is not None else 0.0
        gpus = self._reading(name, allocation, monitor)
        changes, rollups = monitor.observe(now, stats, gpu_share=share, gpus=gpus, values=values)
        for change in changes:
            log.warning("%s: %s: %s", name, change.event, change.message)
        self.rollups += rollups
        return [(change.event, change.message) for change in changes], conditions

    def _file_leftovers(self, model: Model, monitor: ModelMonitor) -> None:
        """Before a new version's monitor starts: what the router sampled from the
        old stable goes to the old version's files, not into the new baseline."""
        sampling = model.monitor.sampling if model.monitor is not None else None
        if sampling is None or self.sampling.get(model.name) is None:
            return
        old = [s for s in self.router.samples(model.name) if s.backend == "stable"]
        self._write(model.name, monitor.version, monitor.release, old, sampling.max_bytes)

    def _write(
        self, model: str, version: str, release: str, samples: list[Sample], cap: int
    ) -> None:
        if not samples:
            return
        written = self.feedback.write(model, version, release, samples, cap)
        if written.skipped:
            log.warning(
                "%s: %d sampled exchanges not kept (too big, or not writable as JSON)",
                model,
                written.skipped,
            )

    def _sampled(
        self,
        model: Model,
        stable: ReleaseSpec,
        canary: ReleaseSpec | None,
        conditions: list[Condition],
    ) -> list[float | str]:
        """Drain the router's samples into the feedback files; the stable's predictions."""
        name = model.name
        sampling = model.monitor.sampling if model.monitor is not None else None
        wanted = (
            SamplingConfig(sampling.share, frozenset(sampling.sensitive))
            if sampling is not None
            else None
        )
        if name not in self.sampling or self.sampling[name] != wanted:
            self.sampling[name] = wanted  # also when refused: not asked again each pass
            self.refused.pop(name, None)
            try:
                self.router.sample(name, wanted)
            except MdcError as exc:
                self.refused[name] = exc
        refused = self.refused.get(name)
        if refused is not None:  # said every pass, until the spec or the router changes
            conditions.append(
                Condition(ConditionType.SAMPLED, False, refused.reason, refused.message)
            )
            return []
        if sampling is None:
            return []
        samples = self.router.samples(name)
        kept = [s for s in samples if s.backend == "stable"]
        self._write(name, stable.version, stable.name, kept, sampling.max_bytes)
        tried = [s for s in samples if s.backend == "canary"]
        where = canary or stable  # no canary: it was just promoted
        self._write(name, where.version, where.name, tried, sampling.max_bytes)
        watch = model.monitor.drift if model.monitor is not None else None
        if watch is None:
            return []
        return [
            value
            for s in kept
            if 200 <= s.status < 300
            for value in predictions(s.response, watch.field)
        ]

    def _reading(
        self, name: str, allocation: Allocation | None, monitor: ModelMonitor
    ) -> GPUReading | None:
        """The held GPUs as NVML sees them, when an objective needs it and this
        machine's NVML can be read (the controller's own node only)."""
        wants_gpu = any(o.metric in _GPU_METRICS for o in monitor.objectives)
        if allocation is None or not wants_gpu or self.nvml is None or self.node is None:
            return None
        held = {s.gpu for replica in allocation.replicas for s in replica if s.node == self.node}
        try:
            seen = [g for g in self.nvml(self.node) if g.uuid in held]
        except Exception as exc:
            log.warning("%s: NVML not read for the monitor: %s", name, exc)
            return None
        if not seen or any(g.memory_used is None for g in seen):
            return None
        busy = [g.utilization for g in seen if g.utilization is not None]
        return GPUReading(
            sum(g.memory for g in seen),
            sum(g.memory_used or 0 for g in seen),
            sum(busy) / len(busy) / 100 if busy else None,
        )

    # -- what is shown and recorded --------------------------------------------------------

    def record(self, name: str, stable: str) -> Mapping[str, object] | None:
        """What ``name``'s status file holds about its running release ``stable``."""
        monitor = self.monitors.get(name)
        if monitor is None or monitor.release != stable:
            return None
        return monitor.record()

    def view(self) -> list[dict[str, Any]]:
        """Every monitored model: live states, values and its latest rollups."""
        out = []
        for name, monitor in sorted(self.monitors.items()):
            doc = self._doc(name)
            latest = {"hourly": doc.get("hourly", [])[:24], "daily": doc.get("daily", [])[:7]}
            out.append(monitor.live() | latest)
        return out

    def forget(self, name: str) -> None:
        """``name`` was pruned: no monitor, no sampling."""
        self.monitors.pop(name, None)
        self.refused.pop(name, None)
        if self.sampling.pop(name, None) is not None:
            self.router.sample(name, None)

    def _doc(self, model: str) -> dict[str, Any]:
        """``monitor/MODEL.yaml`` as last written; what is not a list of rollups in it
        (a hand edit, a bad merge) is dropped rather than trusted."""
        if model not in self._docs:
            raw = self.status.files().get(f"monitor/{model}.yaml")
            try:
                doc: Any = yaml.safe_load(raw) if raw else None
            except yaml.YAMLError:
                log.error("monitor/%s.yaml on the status branch is not YAML: started afresh", model)
                doc = None
            doc = doc if isinstance(doc, dict) else {}
            clean: dict[str, Any] = {"model": model}
            for key in ("hourly", "daily"):
                entries = doc.get(key)
                if isinstance(entries, list):
                    clean[key] = [e for e in entries if isinstance(e, dict)]
            self._docs[model] = clean
        return self._docs[model]

    def commit_rollups(self) -> None:
        """Rollups of periods that closed in this pass: one commit for all models."""
        if not self.rollups:
            return
        rollups, self.rollups = self.rollups, []  # committed once, even if this fails
        files: dict[str, bytes | None] = {}
        for rollup in rollups:
            doc = self._doc(rollup.model)
            key, limit = ("hourly", HOURS_KEPT) if rollup.period == "hour" else ("daily", DAYS_KEPT)
            entry = rollup.to_dict()
            kept = [r for r in doc.get(key, []) if r.get("start") != entry["start"]]
            doc[key] = [entry, *kept][:limit]
            files[f"monitor/{rollup.model}.yaml"] = yaml.safe_dump(
                doc, sort_keys=False, allow_unicode=True, width=100
            ).encode()
        periods = sorted({(r.period, r.start) for r in rollups})
        subject = (
            "rollups: "
            + ", ".join(f"{period} {iso(start)}" for period, start in periods)
            + f" ({len({r.model for r in rollups})} models)"
        )
        self.status.commit(files, subject, {"Rollup": ", ".join(sorted({p for p, _ in periods}))})
