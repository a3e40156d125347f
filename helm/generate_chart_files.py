"""Keep the chart's generated files in step with their sources.

    python helm/generate_chart_files.py           # rewrite them
    python helm/generate_chart_files.py --check   # exit 1 if any is stale (tests/chart runs this)

- `helm/accordion/files/crds/*.yaml`: byte-for-byte copies of the repository's `crds/`
  (themselves generated from the operator's pydantic models by `python -m accordion_operator.crd`).
  The chart must carry copies: a packaged chart cannot reach outside its folder.
- `helm/accordion/files/launcher-policy.json`: the ValidatingAdmissionPolicy (and its binding)
  that keeps each launcher to its own run's status (`trainingrun.builders.build_launcher_policy`);
  `kubectl apply -f` it where the operator is installed without the chart.
- `helm/accordion/files/dashboards/*.json`: the Grafana dashboards, built from the panel lists
  below, so that each PromQL expression is written once, reviewed as code and extracted by the
  tests that evaluate every expression against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from accordion_operator.trainingrun.builders import build_launcher_policy

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "accordion"
SOURCE_CRDS = REPO / "crds"

# -- PromQL building blocks ----------------------------------------------------------------------

SEL = 'namespace=~"$namespace"'
RUN_SEL = 'namespace=~"$namespace", run=~"$run"'


def dcgm_by_run(metric: str, info_sel: str = RUN_SEL) -> str:
    """A DCGM per-GPU series joined to its run through accordion_pod_info.

    The exporter labels a GPU with the pod using it; scraped through a ServiceMonitor those labels
    arrive as exported_pod/exported_namespace (its own pod takes pod/namespace). label_replace
    copies exported_* over the plain labels when present, so both scrape setups join.
    """
    return (
        "label_replace(label_replace("
        f'{metric}, "namespace", "$1", "exported_namespace", "(.+)"), '
        '"pod", "$1", "exported_pod", "(.+)")'
        f" * on (namespace, pod) group_left (run, experiment) accordion_pod_info{{{info_sel}}}"
    )


# -- panel helpers -------------------------------------------------------------------------------

DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(
    title: str,
    targets: list[tuple[str, str]],
    *,
    unit: str = "short",
    kind: str = "timeseries",
    description: str = "",
    stack: bool = False,
    w: int = 12,
    h: int = 8,
    max_value: float | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if max_value is not None:
        defaults["max"] = max_value
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if stack else 0,
            "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        }
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [
            {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}}


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Place panels left to right, wrapping at Grafana's 24 columns; ids in order."""
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24 or p["type"] == "row":
            x, y = 0, y + row_h
            row_h = 0
        p["gridPos"].update({"x": x, "y": y})
        p["id"] = i
        x += w
        row_h = max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
    return panels


def variables(with_run: bool) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        _query_var("namespace", "Namespace", "label_values(accordion_run_phase, namespace)"),
    ]
    if with_run:
        items.append(_query_var("run", "Run", f"label_values(accordion_run_phase{{{SEL}}}, run)"))
    return {"list": items}


def _query_var(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def dashboard(
    uid: str, title: str, description: str, panels: list[dict[str, Any]], with_run: bool
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["accordion", "gpu", "training"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": variables(with_run),
        "panels": layout(panels),
    }


# -- the dashboards ------------------------------------------------------------------------------

IDLE_PCT = 5


def cluster_dashboard() -> dict[str, Any]:
    """For cluster admins: where the GPUs go, what waits, whether the operator is healthy."""
    util = dcgm_by_run("DCGM_FI_DEV_GPU_UTIL", SEL)
    panels = [
        row("GPUs"),
        panel(
            "GPUs allocated vs capacity",
            [
                ("sum(accordion_run_gpus_allocated)", "allocated to runs"),
                ("max(accordion_cluster_gpus_capacity)", "capacity (allocatable)"),
            ],
            description="GPUs held by Accordion runs against the GPUs the allocator sees.",
        ),
        panel(
            "GPUs allocated by namespace",
            [(f"sum by (namespace) (accordion_run_gpus_allocated{{{SEL}}})", "{{namespace}}")],
            stack=True,
        ),
        panel(
            "GPU utilisation by run (DCGM)",
            [(f"avg by (namespace, run) ({util})", "{{namespace}}/{{run}}")],
            unit="percent",
            max_value=100,
            description="DCGM_FI_DEV_GPU_UTIL of each run's GPUs, joined on pod.",
        ),
        panel(
            f"Idle GPUs held by runs (< {IDLE_PCT}% busy)",
            [(f"count(({util}) < {IDLE_PCT}) or vector(0)", "idle GPUs")],
            description="Allocated GPUs whose utilisation is below the idle threshold now.",
        ),
        row("Queue and admission"),
        panel(
            "Runs waiting for admission",
            [(f"sum by (namespace) (accordion_queue_length{{{SEL}}})", "{{namespace}}")],
            stack=True,
            w=8,
        ),
        panel(
            "Admission wait (p50, p95)",
            [
                (
                    "histogram_quantile(0.5, sum by (le) (rate("
                    f"accordion_admission_wait_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.95, sum by (le) (rate("
                    f"accordion_admission_wait_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                    "p95",
                ),
            ],
            unit="s",
            w=8,
        ),
        panel(
            "Runs by phase",
            [(f"sum by (phase) (accordion_runs{{{SEL}}})", "{{phase}}")],
            stack=True,
            w=8,
        ),
        row("Elasticity"),
        panel(
            "Rescale events",
            [
                (
                    "sum by (direction, reason) (increase("
                    f"accordion_rescale_events_total{{{SEL}}}[$__rate_interval]))",
                    "{{direction}} ({{reason}})",
                )
            ],
        ),
        panel(
            "Preemptions",
            [
                (
                    f"sum by (namespace) (increase(accordion_preemptions_total{{{SEL}}}"
                    "[$__rate_interval]))",
                    "{{namespace}}",
                )
            ],
        ),
        row("Operator"),
        panel(
            "Reconcile duration p95 by handler",
            [
                (
                    "histogram_quantile(0.95, sum by (handler, le) (rate("
                    "accordion_reconcile_duration_seconds_bucket[$__rate_interval])))",
                    "{{handler}}",
                )
            ],
            unit="s",
            w=8,
        ),
        panel(
            "Reconcile errors /s",
            [
                (
                    "sum by (handler) (rate(accordion_reconcile_errors_total[$__rate_interval]))",
                    "{{handler}}",
                )
            ],
            w=8,
        ),
        panel(
            "API request errors /s",
            [
                (
                    # `or vector(0)`: a counter with labels has no series until its first
                    # error, and a healthy operator should read 0, not "No data"
                    "sum by (verb, resource, code) "
                    "(rate(accordion_apiserver_request_errors_total[$__rate_interval])) "
                    "or on() vector(0)",
                    "{{verb}} {{resource}} {{code}}",
                )
            ],
            w=8,
        ),
    ]
    return dashboard(
        "accordion-cluster",
        "Accordion / Cluster GPUs",
        "GPU allocation, utilisation, queue and operator health of Accordion training runs.",
        panels,
        with_run=False,
    )


def runs_dashboard() -> dict[str, Any]:
    """For data scientists: how their runs train and scale."""
    trainer = f"{{{RUN_SEL}}}"
    panels = [
        row("GPUs"),
        panel(
            "GPU utilisation per run (DCGM)",
            [
                (
                    f"avg by (namespace, run) ({dcgm_by_run('DCGM_FI_DEV_GPU_UTIL')})",
                    "{{namespace}}/{{run}}",
                )
            ],
            unit="percent",
            max_value=100,
        ),
        panel(
            "GPU memory used per run (DCGM)",
            [
                (
                    f"sum by (namespace, run) ({dcgm_by_run('DCGM_FI_DEV_FB_USED')})",
                    "{{namespace}}/{{run}}",
                )
            ],
            unit="decmbytes",
            description="DCGM_FI_DEV_FB_USED (MiB) summed over the run's GPUs.",
        ),
        row("Workers"),
        panel(
            "Workers: desired vs ready",
            [
                (f"accordion_run_workers_desired{trainer}", "{{run}} desired"),
                (f"accordion_run_workers_current{trainer}", "{{run}} ready"),
            ],
            description="Steps show elastic growth and shrinkage.",
        ),
        panel(
            "Horovod world size (trainer)",
            [(f"max by (namespace, run) (accordion_trainer_world_size{trainer})", "{{run}}")],
        ),
        row("Training"),
        panel(
            "Throughput (samples/s)",
            [
                (
                    "sum by (namespace, run) "
                    f"(rate(accordion_trainer_samples_total{trainer}[$__rate_interval]))",
                    "{{run}}",
                )
            ],
            unit="short",
            w=8,
        ),
        panel(
            "Loss",
            [
                (f"avg by (namespace, run) (accordion_trainer_loss{trainer})", "{{run}} loss"),
                (
                    f"avg by (namespace, run) (accordion_trainer_val_loss{trainer})",
                    "{{run}} val_loss",
                ),
            ],
            w=8,
        ),
        panel(
            "Accuracy",
            [
                (
                    f"avg by (namespace, run) (accordion_trainer_accuracy{trainer})",
                    "{{run}} accuracy",
                ),
                (
                    f"avg by (namespace, run) (accordion_trainer_val_accuracy{trainer})",
                    "{{run}} val_accuracy",
                ),
            ],
            unit="percentunit",
            w=8,
        ),
        panel(
            "Step time p95",
            [
                (
                    "histogram_quantile(0.95, sum by (namespace, run, le) (rate("
                    f"accordion_trainer_step_seconds_bucket{trainer}[$__rate_interval])))",
                    "{{run}}",
                )
            ],
            unit="s",
            w=8,
        ),
        panel(
            "Epoch",
            [(f"max by (namespace, run) (accordion_trainer_epoch{trainer})", "{{run}}")],
            w=8,
        ),
        panel(
            "Elastic reset and checkpoint time (last)",
            [
                (
                    f"max by (namespace, run) (accordion_trainer_elastic_reset_seconds{trainer})",
                    "{{run}} elastic reset",
                ),
                (
                    f"max by (namespace, run) (accordion_trainer_checkpoint_seconds{trainer})",
                    "{{run}} checkpoint",
                ),
            ],
            unit="s",
            w=8,
        ),
        panel(
            "Metrics as compiled (last epoch, by Keras name)",
            [
                (
                    f"avg by (namespace, run, metric) (accordion_trainer_epoch_metric{trainer})",
                    "{{run}} {{metric}}",
                )
            ],
            w=24,
        ),
        row("Experiments"),
        panel(
            "Experiment progress (trials by state)",
            [
                (
                    f"sum by (namespace, experiment, state) (accordion_experiment_trials{{{SEL}}})",
                    "{{experiment}} {{state}}",
                ),
                (
                    f"max by (namespace, experiment) (accordion_experiment_trials_max{{{SEL}}})",
                    "{{experiment}} budget",
                ),
            ],
            stack=False,
        ),
        panel(
            "Experiment best objective",
            [
                (
                    "max by (namespace, experiment) "
                    f"(accordion_experiment_best_objective{{{SEL}}})",
                    "{{experiment}}",
                )
            ],
        ),
    ]
    return dashboard(
        "accordion-runs",
        "Accordion / Training runs",
        "Per-run GPU use, elastic workers, throughput, loss and Experiment progress.",
        panels,
        with_run=True,
    )


DASHBOARDS = {
    "accordion-cluster.json": cluster_dashboard,
    "accordion-runs.json": runs_dashboard,
}


def expected_files(chart: Path = CHART) -> dict[Path, str]:
    files = {
        chart / "files" / "crds" / src.name: src.read_text()
        for src in sorted(SOURCE_CRDS.glob("*.yaml"))
    }
    for name, build in DASHBOARDS.items():
        files[chart / "files" / "dashboards" / name] = json.dumps(build(), indent=2) + "\n"
    # the launcher's admission policy, as the operator's code states it (rbac/launcher-policy.yaml)
    policy = {"apiVersion": "v1", "kind": "List", "items": build_launcher_policy()}
    files[chart / "files" / "launcher-policy.json"] = json.dumps(policy, indent=2) + "\n"
    return files


def stale_files(chart: Path = CHART) -> list[str]:
    """Generated files that differ from what their sources produce, plus orphans."""
    expected = expected_files(chart)
    stale = [
        str(p.relative_to(chart.parent))
        for p, text in expected.items()
        if not p.exists() or p.read_text() != text
    ]
    for folder, pattern in (("crds", "*.yaml"), ("dashboards", "*.json")):
        for p in (chart / "files" / folder).glob(pattern):
            if p not in expected:
                stale.append(f"{p.relative_to(chart.parent)} (no longer generated)")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for s in stale:
            print(f"stale: {s}  (run: python helm/generate_chart_files.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in (CHART / "files" / "crds").glob("*.yaml"):
        path.unlink()
    for path, text in expected_files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
