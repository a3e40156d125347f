"""`make demo` end to end, non-interactively, on a private local cluster: real elastic training
through the operator on process nodes, grow and shrink mid-training, the experiment, Prometheus
scraping the operator and the trainer, and the dashboards rendered to PNG. Then, on the same
cluster and the same run, every dashboard panel and every alert expression of the chart
evaluated against that Prometheus (issue 7's acceptance).

One demo run serves both tests (module fixture): running it twice would double the e2e time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import alert_conditions
import httpx
import pytest
from dcgm_sample import SampleDcgmExporter

from accordion_dev import promcheck
from accordion_dev.cluster import Cluster, free_port_block
from accordion_dev.demo import demo_config
from accordion_dev.render import render

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"


@dataclass
class DemoRun:
    cluster: Cluster
    output: str
    returncode: int
    started: float
    dcgm: SampleDcgmExporter

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(
            f"{self.cluster.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10
        )
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """`accordion-dev demo --ci` on its own cluster, with the stand-in DCGM exporter of recorded
    sample data scraped from before the first pod starts; the cluster is left up for the tests
    and stopped at the end of the module."""
    base = free_port_block(first=int(os.environ.get("ACCORDION_E2E_FIRST_PORT", "20400")))
    state = tmp_path_factory.mktemp("demo") / "cluster"
    cluster = Cluster(demo_config(state, base))
    started = time.time()
    dcgm = SampleDcgmExporter(cluster)  # a scrape target file; Prometheus picks it up at start
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "accordion_dev",
                "--state-dir",
                str(state),
                "--base-port",
                str(base),
                "demo",
                "--ci",
            ],
            capture_output=True,
            text=True,
            timeout=1400,
            cwd=REPO,
            check=False,
        )
        text = out.stdout + out.stderr
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "demo.log").write_text(text)
        yield DemoRun(cluster, text, out.returncode, started, dcgm)
    finally:
        dcgm.close()
        cluster.down()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_runs_end_to_end(demo: DemoRun) -> None:
    text = demo.output
    assert demo.returncode == 0, text[-4000:]
    acc = re.search(r"final validation accuracy: ([0-9.]+)", text)
    assert acc, text[-3000:]
    assert float(acc.group(1)) >= 0.85
    # the run really grew to 3 workers and shrank to 1 while training
    assert "grow to 3 workers" not in text  # no timeout message
    assert "best run" in text
    for metric in (
        "accordion_trainer_samples_per_second",
        "accordion_run_workers_desired",
        "accordion_trainer_world_size",
    ):
        m = re.search(rf"{metric}: (\d+) series", text)
        assert m, f"{metric} missing"
        assert int(m.group(1)) >= 1, f"Prometheus scraped no {metric}"
    # the demo's own check: with the DCGM stand-in scraped, every panel had data
    m = re.search(r"panels with data: (\d+)/(\d+)", text)
    assert m, text[-3000:]
    assert m.group(1) == m.group(2), text[m.start() : m.start() + 2000]
    for name in ("accordion-cluster", "accordion-runs"):
        png = ARTIFACTS / "dashboards" / f"{name}.png"
        assert png.stat().st_size > 10_000


#: How each alert is checked (a new alert must be added here: the test fails otherwise).
#: "real": the expression as shipped, its condition brought about for real (alert_conditions);
#: "stripped": the expression without its final comparisons, because the condition does not
#: hold in a healthy run, or, for the idle-GPU alert, because the GPU utilisation is sample data
#: and whether it is under 5 % says nothing; the join behind it is what is checked.
ALERT_CHECKS = {
    "AccordionRunPendingTooLong": "real",  # a run whose Secret does not exist stays Pending
    "AccordionRunFailingRepeatedly": "real",  # workers fail their data stage-in, replaced
    "AccordionGpusAllocatedButIdle": "stripped",  # sample data, see above
    "AccordionOperatorDown": "real",  # the operator is stopped at the end
    "AccordionReconcileErrors": "stripped",  # a healthy operator's error ratio is 0
    "AccordionApiserverErrors": "stripped",  # real 403s (quota), too few for the 0.05/s rate
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_dashboard_panel_and_alert_returns_data(demo: DemoRun) -> None:
    """The local cluster's real Prometheus scraped the real operator and the real trainers of
    the demo's elastic run and experiment (found through `accordion_dev.pod_discovery`),
    plus a stand-in dcgm-exporter serving RECORDED SAMPLE DATA (`dcgm_sample.py`) for the real
    worker pods, relabelled `exported_pod`/`exported_namespace` as a ServiceMonitor scrape does.

    Every PromQL expression of every panel of every shipped dashboard is then evaluated over the
    whole run as Grafana would when the dashboard opens (`accordion_dev.promcheck`: variables at
    their saved `All`, `$__rate_interval` from the range and the 2 s scrape interval, the
    `datasource` variable resolved to this Prometheus, a range query at Grafana's step) and must
    return data; so must each query variable (its options include the demo's namespace and run).

    Every alert expression is evaluated over the run at the rule evaluation interval and must
    return data. Alerts whose condition a healthy run never meets are checked in one of two ways
    (ALERT_CHECKS): brought about for real after the demo (`alert_conditions.py`: a run that
    stays Pending, a run whose workers fail their data stage-in again and again, a namespace whose
    quota refuses pods, the operator stopped), or with the final comparison stripped where the
    condition cannot honestly be produced here (GPU utilisation is sample data; an error ratio
    over 10 % or 0.05 errors/s would need a broken operator). The shipped rules are also loaded
    into that Prometheus by the demo: the real-condition alerts must reach `pending`/`firing`.
    """
    assert demo.returncode == 0, demo.output[-3000:]
    assert set(ALERT_CHECKS) == {r.alert for r in promcheck.alert_rules()}
    c, prom = demo.cluster, demo.cluster.prometheus_url
    t_conditions = time.time()
    alert_conditions.create(c)
    seen = alert_conditions.wait_for(
        demo.query,
        [
            'accordion_run_phase{namespace="obs-pending", phase="Pending"}',
            # worker 0's stage-in fails in the launcher's pod, which hosts it
            'sum(accordion_run_pod_failures_total{namespace="obs-failing",'
            ' reason="DataUnreachable"}) >= 3',
            'accordion_apiserver_request_errors_total{code="403", resource="pods"}',
            'ALERTS{alertname="AccordionRunPendingTooLong", alertstate="pending"}',
            'ALERTS{alertname="AccordionRunFailingRepeatedly", alertstate="firing"}',
        ],
        timeout=150,
    )
    alert_conditions.delete_failing(c)
    assert all(seen.values()), seen
    alert_conditions.stop_operator(c)
    seen = alert_conditions.wait_for(
        demo.query,
        [
            'absent(up{job="accordion-operator"} == 1)',
            'ALERTS{alertname="AccordionOperatorDown", alertstate="pending"}',
        ],
        timeout=30,
    )
    assert all(seen.values()), seen
    end = time.time() + 1

    results = promcheck.check_dashboards(prom, demo.started, end)
    strip = {name for name, how in ALERT_CHECKS.items() if how == "stripped"}
    results += promcheck.check_alerts(prom, demo.started, end, strip=strip)
    summary = promcheck.summary(results)
    (ARTIFACTS / "observability.txt").write_text(
        f"promcheck over the demo run ({end - demo.started:.0f} s; alert conditions from "
        f"{t_conditions - demo.started:.0f} s)\n{summary}\n"
    )
    assert [r for r in results if not r.ok] == [], summary
    panels = [r for r in results if r.kind == "panel"]
    assert len(panels) == len(promcheck.dashboard_targets()) >= 30
    variables = {(r.where, r.name): r.values for r in results if r.kind == "variable"}
    assert "demo" in variables[("accordion-runs", "namespace")]
    assert {"mnist", "mnist-lr-000"} <= set(variables[("accordion-runs", "run")])

    # the GPU panels join the sample DCGM series to the runs of the real worker pods
    workers = {pod for ns, pod in demo.dcgm.collector.pods_seen if ns == "demo"}
    # worker 0 in the launcher's pod, which hosts it (or in a pod of its own when it does not)
    assert {"mnist-worker-1", "mnist-worker-2"} <= workers, workers
    assert workers & {"mnist-launcher", "mnist-worker-0"}, workers
    runs_dash = promcheck.dashboards()["accordion-runs"]
    values = promcheck.dashboard_values(runs_dash)
    glob = promcheck.builtins(demo.started, end)
    (gpu_util,) = [
        t for t in promcheck.dashboard_targets(runs_dash) if t.panel.startswith("GPU utilisation")
    ]
    expr = promcheck.interpolate(gpu_util.expr, values, glob)
    got = promcheck.query_range(prom, expr, demo.started, end, 2)
    assert {"mnist", "mnist-lr-000", "mnist-lr-001", "mnist-lr-002"} <= {
        s["metric"]["run"] for s in got
    }
    # Experiment progress: the demo's search of 3 trials, all succeeded, and its best value
    exp = _get(c, "/apis/accordion.dev/v1alpha1/namespaces/demo/experiments/mnist-lr")
    best = exp["status"]["bestRun"]["metric"]
    (series,) = demo.query('accordion_experiment_best_objective{experiment="mnist-lr"}[1h]')
    assert float(series["values"][-1][1]) == pytest.approx(best)
    (series,) = demo.query(
        'max_over_time(accordion_experiment_trials_max{experiment="mnist-lr"}[1h])'
    )
    assert float(series["value"][1]) == 3
    succeeded = demo.query(
        'max_over_time(accordion_experiment_trials{experiment="mnist-lr", state="Succeeded"}[1h])'
    )
    assert float(succeeded[0]["value"][1]) == 3
    # capacity as the allocator saw it: 2 GPUs while the demo kept a node cordoned, then 3
    (cap,) = demo.query("accordion_cluster_gpus_capacity[1h]")
    assert {float(v) for _, v in cap["values"]} >= {2.0, 3.0}

    # the pictures, now with everything above in them
    minutes = (end - demo.started) / 60 + 0.5
    for png in render(prom, ARTIFACTS / "dashboards", minutes):
        assert png.stat().st_size > 10_000


def _get(c: Cluster, path: str) -> dict[str, Any]:
    with c.http() as http:
        r = http.get(path)
        r.raise_for_status()
        body: dict[str, Any] = json.loads(r.text)
        return body
