"""The operator's metrics: names and types follow Prometheus conventions and docs/metrics.md,
label values stay bounded, and per-object series disappear with their objects."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accordion_operator.metrics import (
    PREEMPTION_REASONS,
    STATE_FAMILIES,
    TRIAL_STATES,
    OperatorMetrics,
    start_metrics_server,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
NAME = re.compile(r"^accordion_[a-z][a-z0-9_]*$")
#: Suffixes of base units (Prometheus naming guide); no ms, no bytes-as-KB, no percent.
FORBIDDEN_UNITS = ("_milliseconds", "_ms", "_kilobytes", "_megabytes", "_percent", "_minutes")


def _families(m: OperatorMetrics) -> dict[str, str]:
    """Exported family name -> type, as a scraper sees it."""
    return {f.name: f.type for f in m.registry.collect()}


def _doc_rows() -> dict[str, tuple[str, set[str]]]:
    """Operator rows of the table in docs/metrics.md: name -> (type, labels)."""
    rows: dict[str, tuple[str, set[str]]] = {}
    section = DOC.read_text().split("## Operator", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("accordion_"):
            names = [x.strip().strip("`") for x in cells[2].split(",")]
            labels = {x for x in names if x not in ("", "—")}
            rows[cells[0]] = (cells[1], labels)
    return rows


def _exposed_name(name: str, kind: str) -> str:
    return name + "_total" if kind == "counter" else name


def test_every_name_follows_the_conventions() -> None:
    fams = _families(OperatorMetrics())
    assert len(fams) >= 18
    for name, kind in fams.items():
        assert NAME.match(name), name
        assert not name.endswith(FORBIDDEN_UNITS), name
        if kind == "counter":
            # prometheus-client appends _total; the family name must not already carry it
            assert not name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        if name.endswith("_info"):
            assert kind == "gauge", name


def test_docs_table_matches_the_code() -> None:
    m = OperatorMetrics()
    in_code = {
        _exposed_name(f.name, f.type): (f.type, set(_labelnames(m, f.name)))
        for f in m.registry.collect()
    }
    assert _doc_rows() == in_code


def _labelnames(m: OperatorMetrics, family: str) -> tuple[str, ...]:
    for attr in vars(m).values():
        if getattr(attr, "_name", None) == family:
            return tuple(attr._labelnames)
    return STATE_FAMILIES[family][1]  # generated at scrape time from the operator's state


def test_counters_are_exposed_with_total_and_histograms_in_seconds() -> None:
    m = OperatorMetrics()
    m.count_rescale("team-a", old=2, new=4, reason="CapacityAvailable")
    m.observe_admission("team-a", 12.5)
    m.observe_reconcile("run_reconcile", 0.02, failed=True)
    text = _scrape(m)
    assert (
        'accordion_rescale_events_total{direction="up",namespace="team-a",'
        'reason="CapacityAvailable"} 1.0' in text
    )
    assert 'accordion_reconcile_errors_total{handler="run_reconcile"} 1.0' in text
    assert 'accordion_admission_wait_seconds_bucket{le="15.0",namespace="team-a"} 1.0' in text
    assert 'accordion_admission_wait_seconds_sum{namespace="team-a"} 12.5' in text


def _scrape(m: OperatorMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()


def _series(m: OperatorMetrics, name: str) -> list[dict[str, str]]:
    return [
        s.labels
        for f in text_string_to_metric_families(_scrape(m))
        for s in f.samples
        if s.name == name
    ]


def test_unknown_enum_values_fold_into_a_fixed_set() -> None:
    m = OperatorMetrics()
    for i in range(20):
        m.count_rescale("ns", old=1, new=2, reason=f"made-up-{i}")
        m.count_pod_failure("ns", "r", role="sidecar", reason=f"exit {i}")
        m.set_run_state(
            "ns", f"r{i}", phase=f"Weird{i}", workers_desired=1, workers_current=0, gpus_allocated=0
        )
    assert {s["reason"] for s in _series(m, "accordion_rescale_events_total")} == {"Other"}
    failures = _series(m, "accordion_run_pod_failures_total")
    assert [(s["role"], s["reason"]) for s in failures] == [("worker", "Other")]
    assert {s["phase"] for s in _series(m, "accordion_run_phase")} == {"Unknown"}


def test_no_rescale_event_when_the_count_does_not_change() -> None:
    m = OperatorMetrics()
    m.count_rescale("ns", old=3, new=3, reason="SpecChanged")
    m.count_rescale("ns", old=3, new=1, reason="Preempted")
    assert _series(m, "accordion_rescale_events_total") == [
        {"namespace": "ns", "direction": "down", "reason": "Preempted"}
    ]


def test_run_phase_keeps_only_the_current_phase_and_forget_run_drops_every_series() -> None:
    m = OperatorMetrics()
    m.set_run_state(
        "ns", "r1", phase="Queued", workers_desired=0, workers_current=0, gpus_allocated=0
    )
    m.set_run_state(
        "ns", "r1", phase="Running", workers_desired=4, workers_current=3, gpus_allocated=3
    )
    m.count_pod_failure("ns", "r1", role="worker", reason="DataUnreachable")
    m.set_run_state(
        "ns", "r2", phase="Running", workers_desired=1, workers_current=1, gpus_allocated=1
    )
    assert _series(m, "accordion_run_phase") == [
        {"namespace": "ns", "run": "r1", "phase": "Running"},
        {"namespace": "ns", "run": "r2", "phase": "Running"},
    ]
    m.forget_run("ns", "r1")
    text = _scrape(m)
    assert 'run="r1"' not in text
    assert 'accordion_run_gpus_allocated{namespace="ns",run="r2"} 1.0' in text
    m.forget_run("ns", "never-seen")  # deleting an unknown run is harmless


def test_runs_by_phase_and_queue_lengths_replace_stale_pairs() -> None:
    m = OperatorMetrics()
    m.set_runs_by_phase({("a", "Running"): 2, ("b", "Queued"): 1})
    m.set_runs_by_phase({("a", "Succeeded"): 2, ("a", "Bogus"): 1, ("a", "Nonsense"): 2})
    assert sorted((s["namespace"], s["phase"]) for s in _series(m, "accordion_runs")) == [
        ("a", "Succeeded"),
        ("a", "Unknown"),
    ]
    assert 'accordion_runs{namespace="a",phase="Unknown"} 3.0' in _scrape(m)
    m.set_queue_lengths({"a": 3})
    m.set_queue_lengths({"b": 1})
    assert _series(m, "accordion_queue_length") == [{"namespace": "b"}]


def test_pod_info_links_pods_to_runs_and_follows_relabelling() -> None:
    m = OperatorMetrics()
    m.set_pod_info("ns", "r1-worker-0", run="r1", role="worker", experiment="e1")
    m.set_pod_info("ns", "r1-worker-0", run="r1", role="worker", experiment="e2")
    assert _series(m, "accordion_pod_info") == [
        {"namespace": "ns", "pod": "r1-worker-0", "run": "r1", "experiment": "e2", "role": "worker"}
    ]
    assert list(m.known_pods()) == [("ns", "r1-worker-0")]
    m.forget_pod("ns", "r1-worker-0")
    assert _series(m, "accordion_pod_info") == []


def test_experiment_progress_drops_states_that_emptied() -> None:
    m = OperatorMetrics()
    m.set_experiment(
        "ns", "e", trials={"Running": 2, "Pending": 6}, max_trials=8, best_objective=None
    )
    m.set_experiment("ns", "e", trials={"Succeeded": 8}, max_trials=8, best_objective=0.12)
    assert [s["state"] for s in _series(m, "accordion_experiment_trials")] == ["Succeeded"]
    assert 'accordion_experiment_best_objective{experiment="e",namespace="ns"} 0.12' in _scrape(m)
    m.forget_experiment("ns", "e")
    assert 'experiment="e"' not in _scrape(m)


def test_apiserver_errors_label_the_status_code_or_none() -> None:
    m = OperatorMetrics()
    m.count_apiserver_error("PATCH", "pods", 409)
    m.count_apiserver_error("get", "trainingruns", None)
    series = _series(m, "accordion_apiserver_request_errors_total")
    assert sorted((s["verb"], s["resource"], s["code"]) for s in series) == [
        ("get", "trainingruns", "none"),
        ("patch", "pods", "409"),
    ]


def test_two_instances_do_not_share_series() -> None:
    a, b = OperatorMetrics(), OperatorMetrics()
    a.count_preemption("ns")
    assert _series(b, "accordion_preemptions_total") == []


@pytest.mark.timeout(20)
def test_metrics_server_serves_the_registry_over_http() -> None:
    m = OperatorMetrics()
    m.cluster_gpus_capacity.set(32)
    server, thread = start_metrics_server(0, m, addr="127.0.0.1", version="9.9.9")
    try:
        port = server.server_address[1]
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "accordion_cluster_gpus_capacity 32.0" in body
        assert 'accordion_operator_build_info{version="9.9.9"} 1.0' in body
    finally:
        server.shutdown()
        thread.join(5)


def test_declared_handlers_export_zero_errors_before_the_first_one() -> None:
    m = OperatorMetrics()
    m.declare_handlers(["controller_pass"])
    text = _scrape(m)
    assert 'accordion_reconcile_errors_total{handler="controller_pass"} 0.0' in text
    assert 'accordion_reconcile_duration_seconds_count{handler="controller_pass"} 0.0' in text


def test_run_phases_are_the_api_phases() -> None:
    from typing import get_args

    from accordion_operator.api.trainingrun import Phase
    from accordion_operator.metrics import RUN_PHASES

    assert set(get_args(Phase)) == RUN_PHASES
    doc_line = next(x for x in DOC.read_text().splitlines() if x.startswith("- `phase`:"))
    assert {p.strip() for p in doc_line.split(":", 1)[1].split("(")[0].split(",")} == RUN_PHASES


def test_declared_namespaces_export_zero_preemptions_once() -> None:
    m = OperatorMetrics()
    m.declare_namespaces(["team-a"])
    m.count_preemption("team-a")
    m.declare_namespaces(["team-a", "team-b"])  # again: must not reset team-a's count
    text = _scrape(m)
    assert 'accordion_preemptions_total{namespace="team-a",reason="HigherPriority"} 1.0' in text
    assert 'accordion_preemptions_total{namespace="team-b",reason="HigherPriority"} 0.0' in text
    series = _series(m, "accordion_preemptions_total")
    assert {s["reason"] for s in series} == PREEMPTION_REASONS


def test_trial_states_include_stopped_and_fold_the_rest() -> None:
    m = OperatorMetrics()
    m.set_experiment(
        "ns", "e", trials={"Stopped": 2, "Weird": 1, "Pending": 1}, max_trials=4, best_objective=1
    )
    got = {s["state"]: s for s in _series(m, "accordion_experiment_trials")}
    assert set(got) == {"Stopped", "Pending"}
    assert 'accordion_experiment_trials{experiment="e",namespace="ns",state="Pending"} 2.0' in (
        _scrape(m)
    )
    assert {"Pending", "Running", "Succeeded", "Failed", "Pruned", "Stopped"} == TRIAL_STATES
    doc_line = next(x for x in DOC.read_text().splitlines() if x.startswith("- `state` of trials"))
    assert {s.strip() for s in doc_line.split(":", 1)[1].split("(")[0].split(",")} == TRIAL_STATES
