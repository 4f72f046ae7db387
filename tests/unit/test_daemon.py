"""The controller's pieces that need no process: ``mdc.yaml``, the state-directory
lock and the Prometheus text of :func:`controller.app.daemon.metrics_text`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.git.source import PollResult
from controller.app.daemon import Config, StateLock, _PassStats, load_config, metrics_text
from controller.app.reconciler import PassResult
from controller.app.status_writes import StatusWrites
from controller.core.allocation import Demand, Placed, ReleaseKind, Request
from controller.core.inventory import GPU
from controller.core.ledger import Ledger
from controller.core.status import ModelStatus, Phase
from controller.errors import PermanentError, TransientError
from controller.spec.kinds import Quota

GIB = 1 << 30

# -- mdc.yaml -------------------------------------------------------------------------

FULL_CONFIG = """\
# every key mdc.yaml knows
repo: git://git.example.invalid/specs.git
branch: release
statusBranch: mdc/state
stateDir: /var/lib/mdc
pollInterval: 12
tick: 0.25
listen: 0.0.0.0:9100
router: haproxy
routerPorts:
  fraud-scorer: 9001
  search-ranker: 9002
webhookSecretFile: /etc/mdc/webhook-secret
githubRepository: acme/specs
githubApiUrl: https://ghe.example.invalid/api/v3
revertPrs: true
node: gpu-node-1
runtime: ray
rayAddress: ray://head:10001
rayNamespace: mdc-staging
prometheus: http://prometheus.example.invalid:9090
bentomlHome: /var/lib/bentoml
leaseTtl: 30
artifactNetworks: [10.20.0.0/16, 127.0.0.1]
artifactTimeout: 120
mlflowTrackingUri: https://mlflow.example.invalid
packageIndex: https://pypi.example.invalid/simple
wheelDirs: [/srv/wheels, wheels]
"""

FULL_EXPECTED = Config(
    repo="git://git.example.invalid/specs.git",
    branch="release",
    status_branch="mdc/state",
    state_dir=Path("/var/lib/mdc"),
    poll_interval=12.0,
    tick=0.25,
    listen="0.0.0.0:9100",
    router="haproxy",
    router_ports={"fraud-scorer": 9001, "search-ranker": 9002},
    webhook_secret_file=Path("/etc/mdc/webhook-secret"),
    github_repository="acme/specs",
    github_api_url="https://ghe.example.invalid/api/v3",
    revert_prs=True,
    node="gpu-node-1",
    runtime="ray",
    ray_address="ray://head:10001",
    ray_namespace="mdc-staging",
    prometheus="http://prometheus.example.invalid:9090",
    bentoml_home=Path("/var/lib/bentoml"),
    lease_ttl=30.0,
    artifact_networks=("10.20.0.0/16", "127.0.0.1"),
    artifact_timeout=120.0,
    mlflow_tracking_uri="https://mlflow.example.invalid",
    package_index="https://pypi.example.invalid/simple",
    wheel_dirs=(Path("/srv/wheels"), Path("wheels")),
)


def write(tmp_path: Path, text: str, name: str = "mdc.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_key_round_trips_into_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_CONFIG))
    assert config == FULL_EXPECTED
    assert isinstance(config.poll_interval, float)  # 12 in YAML is an int
    assert isinstance(config.state_dir, Path)
    # the file sets every field, each to something other than its default
    default = Config()
    unchanged = [
        f.name for f in fields(Config) if getattr(config, f.name) == getattr(default, f.name)
    ]
    assert unchanged == []


def test_an_empty_mapping_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "{}\n")) == Config()
    assert load_config(write(tmp_path, "repo: /srv/specs.git\n")) == Config(repo="/srv/specs.git")


@pytest.mark.parametrize(
    ("text", "line", "column", "key"),
    [
        ("bogus: 1\n", 1, 1, "bogus"),
        ("repo: x\nbranch: main\npoll_interval: 5\n", 3, 1, "poll_interval"),  # snake_case
        ("# the controller\n\nrepo: x\nPollInterval: 5\n", 4, 1, "PollInterval"),
        ("repo: x\n1: 2\n", 2, 1, "1"),
    ],
)
def test_unknown_key_names_file_line_column_and_key(
    tmp_path: Path, text: str, line: int, column: int, key: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PermanentError) as caught:
        load_config(path)
    assert caught.value.reason == "BadConfig"
    message = caught.value.message
    assert message.startswith(f"{path}:{line}:{column}: ")
    assert f"unknown key {key!r}" in message
    assert "pollInterval" in message  # the keys it does know


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ('pollInterval: "soon"\n', 1, "pollInterval"),
        ("repo: x\npollInterval: soon\n", 2, "pollInterval"),
        ('repo: x\nbranch: main\nrevertPrs: "yes"\n', 3, "revertPrs"),
        ("revertPrs: 1\n", 1, "revertPrs"),
        ("routerPorts: [1]\n", 1, "routerPorts"),
        ("repo: x\nruntime: kubernetes\n", 2, "runtime"),
        ("router: nginx\n", 1, "router"),
        ("routerPorts:\n  fraud-scorer: http\n", 1, "routerPorts"),
        ("tick: true\n", 1, "tick"),
        ("repo: x\ntick: [0.5]\n", 2, "tick"),
        ("stateDir: 5\n", 1, "stateDir"),
        ("repo: 5\n", 1, "repo"),
        ("repo: x\nlisten: 8080\n", 2, "listen"),
        ("webhookSecretFile: {a: 1}\n", 1, "webhookSecretFile"),
    ],
)
def test_wrong_type_names_file_line_and_key(tmp_path: Path, text: str, line: int, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PermanentError) as caught:
        load_config(path)
    assert caught.value.reason == "BadConfig"
    assert caught.value.message.startswith(f"{path}:{line}:")
    assert f": {key} must be " in caught.value.message


@pytest.mark.parametrize("value", ["true", "9001.7"])
def test_router_port_must_be_an_integer(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"routerPorts:\n  fraud-scorer: {value}\n")
    with pytest.raises(PermanentError, match="routerPorts"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repo: [\n", "YAML syntax"),
        ("repo: x\n  branch: main\n bad\n", "YAML syntax"),
        ("repo: a\nrepo: b\n", "duplicate key 'repo'"),
        ("- repo: x\n", "expected one YAML mapping"),
        ("just a string\n", "expected one YAML mapping"),
        ("", "expected one YAML mapping"),
        ("repo: a\n---\nrepo: b\n", "expected one YAML mapping"),
    ],
)
def test_malformed_file_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PermanentError) as caught:
        load_config(path)
    assert caught.value.reason == "BadConfig"
    assert caught.value.message.startswith(str(path))
    assert expected in caught.value.message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(PermanentError) as caught:
        load_config(path)
    assert caught.value.reason == "BadConfig"
    assert caught.value.message.startswith(f"{path}: cannot read")


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("0.0.0.0:9100", "0.0.0.0", 9100),
        ("localhost:0", "localhost", 0),
        (":9000", "127.0.0.1", 9000),
        ("9000", "127.0.0.1", 9000),
    ],
)
def test_listen_splits_into_host_and_port(listen: str, host: str, port: int) -> None:
    config = Config(listen=listen)
    assert (config.host, config.port) == (host, port)


# -- the state-directory lock ------------------------------------------------------------


def test_second_lock_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"  # created on acquire
    first, second = StateLock(state), StateLock(state)
    first.acquire()
    try:
        assert (state / "lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(PermanentError) as caught:
            second.acquire()
        assert caught.value.reason == "Locked"
        assert f"another controller (pid {os.getpid()})" in caught.value.message
        assert str(state / "lock") in caught.value.message
    finally:
        first.release()
    second.acquire()  # free again once released
    try:
        with pytest.raises(PermanentError, match="another controller"):
            StateLock(state).acquire()
    finally:
        second.release()


def test_lock_as_context_manager_releases_on_exit(tmp_path: Path) -> None:
    with StateLock(tmp_path), pytest.raises(PermanentError, match="another controller"):
        StateLock(tmp_path).acquire()
    with StateLock(tmp_path) as again:
        assert again.path == tmp_path / "lock"


def test_locks_on_different_state_dirs_do_not_conflict(tmp_path: Path) -> None:
    with StateLock(tmp_path / "a"), StateLock(tmp_path / "b"):
        assert (tmp_path / "a" / "lock").exists()
        assert (tmp_path / "b" / "lock").exists()


def test_release_without_acquire_is_harmless(tmp_path: Path) -> None:
    lock = StateLock(tmp_path)
    lock.release()
    lock.acquire()
    lock.release()
    lock.release()


# -- metrics_text -------------------------------------------------------------------------


@dataclass
class FakeReconciler:
    """The attributes :func:`metrics_text` reads."""

    statuses: dict[str, ModelStatus] = field(default_factory=dict)
    verdicts: dict[tuple[str, str], int] = field(default_factory=dict)
    ledgers: dict[str, tuple[Any, Ledger]] = field(default_factory=dict)
    router: Any = None
    writes: StatusWrites = field(default_factory=StatusWrites)


def poll(error: TransientError | None = None) -> PollResult:
    return PollResult(None, False, False, None, error, 0, 30.0, 0.0)


def passed(seconds: float, *, failed: tuple[str, ...] = ()) -> PassResult:
    return PassResult("main@sha1:" + "a" * 40, (), failed, poll(), seconds)


def make_ledger(gpus: int, holdings: list[tuple[str, str, ReleaseKind, Demand]]) -> Ledger:
    ledger = Ledger(
        [GPU("node-1", i, f"GPU-{i}", "A100", 80 * GIB, declared=True) for i in range(gpus)],
        [Quota(team, 1, gpus, 1) for team in sorted({team for _, team, _, _ in holdings})],
    )
    for model, team, kind, demand in holdings:
        placed = ledger.place(Request(f"{model}/{kind}", model, team, demand, kind=kind))
        assert isinstance(placed, Placed), placed
    return ledger


def two_models() -> FakeReconciler:
    return FakeReconciler(
        statuses={
            "search-ranker": ModelStatus("search-ranker", Phase.PROGRESSING, weight=25),
            "fraud-scorer": ModelStatus("fraud-scorer", Phase.HEALTHY),
        },
        verdicts={("search-ranker", "pass"): 3, ("search-ranker", "fail"): 1},
    )


def samples_of(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) of each sample named ``name``, in order, as a parser reads them."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_model_phase_is_one_for_the_current_phase_only() -> None:
    text = metrics_text(two_models(), _PassStats())
    samples = samples_of(text, "mdc_model_phase")
    assert len(samples) == 2 * len(Phase)
    ones = [labels for labels, value in samples if value == 1]
    assert ones == [
        {"model": "fraud-scorer", "phase": "Healthy"},
        {"model": "search-ranker", "phase": "Progressing"},
    ]
    assert all(value == 0 for labels, value in samples if labels not in ones)
    phases = [labels["phase"] for labels, _ in samples if labels["model"] == "fraud-scorer"]
    assert phases == [phase.value for phase in Phase]


def test_canary_weight_and_verdict_lines() -> None:
    text = metrics_text(two_models(), _PassStats())
    assert samples_of(text, "mdc_canary_weight_percent") == [
        ({"model": "fraud-scorer"}, 0),
        ({"model": "search-ranker"}, 25),
    ]
    assert samples_of(text, "mdc_canary_verdicts_total") == [
        ({"model": "search-ranker", "outcome": "fail"}, 1),
        ({"model": "search-ranker", "outcome": "pass"}, 3),
    ]


def test_gpus_held_by_team_and_release_and_pool_total() -> None:
    ledger = make_ledger(
        4,
        [
            ("fraud-scorer", "payments", ReleaseKind.STABLE, Demand(gpus=1)),
            ("fraud-scorer", "payments", ReleaseKind.CANARY, Demand(fraction=0.5)),
            ("search-ranker", "search", ReleaseKind.STABLE, Demand(gpus=2)),
        ],
    )
    reconciler = FakeReconciler(ledgers={"shared-a100": (None, ledger)})
    text = metrics_text(reconciler, _PassStats())
    assert samples_of(text, "mdc_gpus_held") == [
        ({"pool": "shared-a100", "team": "payments", "release": "canary"}, 0.5),
        ({"pool": "shared-a100", "team": "payments", "release": "stable"}, 1),
        ({"pool": "shared-a100", "team": "search", "release": "stable"}, 2),
    ]
    assert samples_of(text, "mdc_gpus_total") == [({"pool": "shared-a100"}, 4)]


def test_an_empty_pool_has_a_total_and_no_holdings() -> None:
    reconciler = FakeReconciler(ledgers={"idle": (None, make_ledger(2, []))})
    text = metrics_text(reconciler, _PassStats())
    assert samples_of(text, "mdc_gpus_held") == []
    assert samples_of(text, "mdc_gpus_total") == [({"pool": "idle"}, 2)]


def test_pass_counters_and_cumulative_histogram() -> None:
    stats = _PassStats()
    durations = [0.005, 0.03, 0.7, 45.0]
    for i, seconds in enumerate(durations):
        stats.add(passed(seconds, failed=("m",) if i == 1 else ()), now=1000.0 + i)
    text = metrics_text(FakeReconciler(), stats)
    assert samples_of(text, "mdc_reconcile_passes_total") == [({}, 4)]
    assert samples_of(text, "mdc_reconcile_pass_failures_total") == [({}, 1)]
    buckets = samples_of(text, "mdc_reconcile_pass_duration_seconds_bucket")
    assert [(labels["le"], value) for labels, value in buckets] == [
        ("0.01", 1),
        ("0.05", 2),
        ("0.1", 2),
        ("0.5", 2),
        ("1", 3),
        ("5", 3),
        ("30", 3),
        ("+Inf", 4),
    ]
    ((labels, seconds),) = samples_of(text, "mdc_reconcile_pass_duration_seconds_sum")
    assert (labels, seconds) == ({}, pytest.approx(sum(durations), abs=1e-6))
    assert samples_of(text, "mdc_reconcile_pass_duration_seconds_count") == [({}, 4)]
    assert stats.last_ok == 1003.0


@pytest.mark.parametrize(
    "durations",
    [[], [0.0], [0.01, 0.0100001], [31.0, 31.0], [0.2] * 5 + [2.0] * 3 + [100.0]],
)
def test_histogram_buckets_are_cumulative_and_end_with_count(durations: list[float]) -> None:
    stats = _PassStats()
    for seconds in durations:
        stats.add(passed(seconds), now=0.0)
    text = metrics_text(FakeReconciler(), stats)
    (family,) = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "mdc_reconcile_pass_duration_seconds"
    ]
    assert family.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
    bounds = [float(le) for le, _ in buckets]
    assert bounds == sorted(bounds)
    assert bounds[-1] == float("inf")
    counts = [value for _, value in buckets]
    assert counts == sorted(counts)  # cumulative
    for bound, count in zip(bounds, counts, strict=True):
        assert count == sum(1 for s in durations if s <= bound)
    (count,) = [s.value for s in family.samples if s.name.endswith("_count")]
    (total,) = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert counts[-1] == count == len(durations)
    assert total == pytest.approx(sum(durations), abs=1e-6)


@pytest.mark.parametrize(
    ("name", "escaped"),
    [
        ('say "hi"', 'say \\"hi\\"'),
        ("back\\slash", "back\\\\slash"),
        ("two\nlines", "two\\nlines"),
        ('all\\"\n', 'all\\\\\\"\\n'),
    ],
)
def test_label_values_are_escaped(name: str, escaped: str) -> None:
    ledger = make_ledger(1, [("m", name, ReleaseKind.STABLE, Demand(gpus=1))])
    reconciler = FakeReconciler(
        statuses={name: ModelStatus(name, Phase.PAUSED, weight=10)},
        verdicts={(name, "pass"): 2},
        ledgers={name: (None, ledger)},
    )
    text = metrics_text(reconciler, _PassStats())
    for label in ("model", "pool", "team"):
        assert f'{label}="{escaped}"' in text  # escaped on the wire
    # a parser reads the original value back
    phases = samples_of(text, "mdc_model_phase")
    assert ({"model": name, "phase": "Paused"}, 1) in phases
    assert {labels["model"] for labels, _ in phases} == {name}
    assert samples_of(text, "mdc_canary_weight_percent") == [({"model": name}, 10)]
    assert samples_of(text, "mdc_canary_verdicts_total") == [
        ({"model": name, "outcome": "pass"}, 2)
    ]
    assert samples_of(text, "mdc_gpus_held") == [
        ({"pool": name, "team": name, "release": "stable"}, 1)
    ]


def test_text_is_valid_exposition_format() -> None:
    stats = _PassStats()
    stats.add(passed(0.2), now=0.0)
    text = metrics_text(two_models(), stats)
    assert text.endswith("\n")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: f.type for name, f in families.items()} == {
        "mdc_reconcile_passes": "counter",
        "mdc_reconcile_pass_failures": "counter",
        "mdc_reconcile_pass_duration_seconds": "histogram",
        "mdc_status_push_failures": "counter",
        "mdc_controller_fault": "gauge",
        "mdc_status_commits_pending": "gauge",
        "mdc_model_phase": "gauge",
        "mdc_canary_weight_percent": "gauge",
        "mdc_canary_verdicts": "counter",
        "mdc_gpus_held": "gauge",
        "mdc_gpus_total": "gauge",
        "mdc_objective_state": "gauge",
        "mdc_objective_value": "gauge",
        "mdc_drift_score": "gauge",
    }
    assert all(f.documentation for f in families.values())
    weights = {s.labels["model"]: s.value for s in families["mdc_canary_weight_percent"].samples}
    assert weights == {"fraud-scorer": 0, "search-ranker": 25}


@pytest.mark.parametrize("pools", [1, 2])
def test_gpu_families_are_each_one_typed_group(pools: int) -> None:
    ledgers = {
        f"pool-{i}": (None, make_ledger(2, [("m", "team", ReleaseKind.STABLE, Demand(gpus=1))]))
        for i in range(pools)
    }
    text = metrics_text(FakeReconciler(ledgers=ledgers), _PassStats())
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    by_name = {f.name: f for f in families}
    for name in ("mdc_gpus_held", "mdc_gpus_total"):
        assert by_name[name].type == "gauge"
        assert len(by_name[name].samples) == pools


@dataclass
class MonitoredReconciler(FakeReconciler):
    views: list[dict[str, Any]] = field(default_factory=list)

    def monitor_view(self) -> list[dict[str, Any]]:
        return self.views


def test_objective_states_values_and_drift_are_metrics() -> None:
    reconciler = MonitoredReconciler(
        views=[
            {
                "model": "search-ranker",
                "objectives": [
                    {"name": "latency", "state": "breached", "value": 0.41},
                    {"name": "errors", "state": "unknown", "value": None},
                ],
                "drift": {"field": "score", "score": 0.031},
            }
        ]
    )
    text = metrics_text(reconciler, _PassStats())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    states = {
        (s.labels["objective"], s.labels["state"]): s.value
        for s in families["mdc_objective_state"].samples
    }
    assert states[("latency", "breached")] == 1
    assert states[("latency", "ok")] == 0
    assert states[("errors", "unknown")] == 1
    values = {s.labels["objective"]: s.value for s in families["mdc_objective_value"].samples}
    assert values == {"latency": 0.41}  # no value yet: no sample
    (drift,) = families["mdc_drift_score"].samples
    assert (drift.labels, drift.value) == ({"model": "search-ranker", "field": "score"}, 0.031)
    assert "mdc_objective_state{" not in metrics_text(FakeReconciler(), _PassStats())
