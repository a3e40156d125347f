"""Every dashboard query returns data from a real Prometheus, and every alert expression runs.

The local cluster's Prometheus scrapes three endpoints served by this test:
- the operator's metrics (`accordion_operator.metrics.OperatorMetrics`), filled as the operator
  would for one namespace with a running run and an experiment;
- the trainer's metrics (`accordion_trainer.metrics`, the real definitions) with the target
  labels the chart's PodMonitor adds (namespace, pod, run);
- RECORDED SAMPLE DATA standing in for NVIDIA's dcgm-exporter (no GPU here): DCGM_FI_DEV_GPU_UTIL
  and DCGM_FI_DEV_FB_USED for the run's worker pods, labelled as a ServiceMonitor scrape labels
  them (exported_pod/exported_namespace), to exercise the join with accordion_pod_info.
The end-to-end run with the real operator and trainer is the observability e2e's job; this test
pins the queries themselves (names, labels, joins) to the metrics as defined in code.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import chartkit
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, start_http_server

from accordion_dev.cluster import Cluster
from accordion_operator.metrics import OperatorMetrics

NS = "team-vision"
RUN = "resnet"


def _operator_metrics() -> OperatorMetrics:
    m = OperatorMetrics()
    m.build_info.labels(version="test").set(1)
    m.set_runs_by_phase({(NS, "Running"): 1, (NS, "Queued"): 1})
    m.set_run_state(
        NS, RUN, phase="Running", workers_desired=3, workers_current=2, gpus_allocated=2
    )
    m.set_run_state(
        NS, "waiting", phase="Queued", workers_desired=0, workers_current=0, gpus_allocated=0
    )
    m.cluster_gpus_capacity.set(32)
    m.set_queue_lengths({NS: 1})
    m.observe_admission(NS, 42.0)
    m.count_rescale(NS, old=2, new=3, reason="CapacityAvailable")
    m.count_preemption(NS)
    m.count_pod_failure(NS, RUN, role="worker", reason="TrainingError")
    m.declare_handlers(["controller_pass"])
    m.observe_reconcile("controller_pass", 0.03, failed=False)
    m.count_apiserver_error("patch", "pods", 409)
    for i in range(2):
        m.set_pod_info(NS, f"{RUN}-worker-{i}", run=RUN, role="worker", experiment="sweep")
    m.set_experiment(
        NS, "sweep", trials={"Running": 1, "Succeeded": 3}, max_trials=8, best_objective=0.08
    )
    return m


def _recorded_dcgm() -> CollectorRegistry:
    """RECORDED SAMPLE DATA in dcgm-exporter's shape (values from an H100 under training)."""
    reg = CollectorRegistry()
    labels = [
        "gpu",
        "UUID",
        "modelName",
        "Hostname",
        "namespace",
        "pod",
        "container",
        "exported_namespace",
        "exported_pod",
        "exported_container",
    ]
    util = Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels, registry=reg)
    fb = Gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels, registry=reg)
    for i, (u, mem) in enumerate([(93.0, 61234.0), (2.0, 812.0)]):
        values = [
            str(i),
            f"GPU-0000{i}",
            "NVIDIA H100 80GB HBM3",
            "gpu-node-0",
            "gpu-operator",
            "nvidia-dcgm-exporter-x7k2p",
            "nvidia-dcgm-exporter",
            NS,
            f"{RUN}-worker-{i}",
            "worker",
        ]
        util.labels(*values).set(u)
        fb.labels(*values).set(mem)
    return reg


def _trainer_metrics() -> None:
    from accordion_trainer import metrics as t

    t.SAMPLES.inc(6400)
    t.STEPS.inc(100)
    t.STEP_SECONDS.observe(0.12)
    t.WORLD_SIZE.set(2)
    # as the trainer does at an epoch's end: the fixed gauges and every compiled metric by name
    t.record_epoch({"loss": 0.31, "accuracy": 0.91, "val_loss": 0.35, "val_accuracy": 0.9}, 530, 2)
    t.RESET_SECONDS.set(4.2)
    t.CHECKPOINT_SECONDS.set(1.3)


def _wait(fn: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(1)


def test_every_dashboard_query_returns_data_and_every_alert_runs(
    cluster: Cluster, prom_query: Callable[[str], list[dict[str, Any]]]
) -> None:
    tag = secrets.token_hex(3)
    _trainer_metrics()
    servers = [
        ("accordion-operator", _operator_metrics().registry, {}),
        ("accordion-trainer", REGISTRY, {"namespace": NS, "pod": f"{RUN}-worker-0", "run": RUN}),
        ("dcgm-exporter", _recorded_dcgm(), {}),
    ]
    started = []
    try:
        for job, registry, labels in servers:
            server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
            started.append((server, thread))
            cluster.add_scrape_target(
                f"{job}-{tag}",
                f"127.0.0.1:{server.server_address[1]}",
                {"job": job, "test": tag, **labels},
            )
        # two scrapes at least, so that rate() and increase() have two samples
        assert _wait(lambda: prom_query(f'count_over_time(up{{test="{tag}"}}[1m]) >= 3'), 60)
        queries = chartkit.dashboard_expressions()
        empty: list[str] = []
        for _uid, title, expr in queries:
            if not _wait(lambda e=expr: prom_query(e), 10):
                empty.append(f"{title}: {expr}")
        assert empty == [], "\n".join(empty)
        # alerts: they must evaluate (a healthy cluster fires none of them, except the idle-GPU
        # one, which needs 30 min of `for:` and so is only pending)
        for _name, expr in chartkit.alert_expressions():
            prom_query(expr)  # raises on a PromQL error
        # the DCGM join: the run's two GPUs (93% and 2% busy) average to 47.5%
        (util,) = [q for _, t, q in queries if t == "GPU utilisation per run (DCGM)"]
        got = [(r["metric"]["run"], float(r["value"][1])) for r in prom_query(util)]
        assert got == [(RUN, 47.5)]
        (idle,) = [q for _, t, q in queries if t.startswith("Idle GPUs held by runs")]
        assert float(prom_query(idle)[0]["value"][1]) == 1  # the 2% one
    finally:
        for job, _, _ in servers:
            cluster.remove_scrape_target(f"{job}-{tag}")
        for server, thread in started:
            server.shutdown()
            thread.join(5)
