"""The Grafana dashboards: sidecar-ready, datasource as a variable, namespace/run templating,
valid PromQL (checked by promtool), and only metric names that are documented."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from chartkit import CHART, REPO, alert_expressions, dashboard_expressions, tool

DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
METRIC = re.compile(r"\b((?:accordion|DCGM)_[A-Za-z0-9_]+)\b")


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def exprs(dash: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel (what an e2e evaluates against Prometheus)."""
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_two_dashboards_with_unique_uids() -> None:
    assert [p.name for p in DASHBOARDS] == ["accordion-cluster.json", "accordion-runs.json"]
    uids = [_load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


def test_datasource_is_a_variable_everywhere() -> None:
    for path in DASHBOARDS:
        dash = _load(path)
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in dash["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
        assert '"uid": "prometheus"' not in path.read_text()  # no hard-coded datasource


def test_namespace_and_run_templating() -> None:
    runs = _load(CHART / "files" / "dashboards" / "accordion-runs.json")
    names = [v["name"] for v in runs["templating"]["list"]]
    assert names == ["datasource", "namespace", "run"]
    run_var = runs["templating"]["list"][2]
    assert "$namespace" in run_var["definition"]  # runs of the chosen namespaces only
    for expr in exprs(runs):
        assert '"$namespace"' in expr, expr


def test_gpu_panels_join_dcgm_to_runs_through_the_info_gauge() -> None:
    runs = _load(CHART / "files" / "dashboards" / "accordion-runs.json")
    gpu = [e for e in exprs(runs) if "DCGM_FI_DEV" in e]
    assert {m for e in gpu for m in METRIC.findall(e)} >= {
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "accordion_pod_info",
    }
    for e in gpu:
        assert '"exported_namespace"' in e
        assert '"exported_pod"' in e
        assert "on (namespace, pod) group_left" in e


def test_issue_panels_are_present() -> None:
    titles = [p["title"] for path in DASHBOARDS for p in _load(path)["panels"]]
    for wanted in (
        "GPU utilisation per run (DCGM)",
        "GPUs allocated vs capacity",
        "Idle GPUs held by runs (< 5% busy)",
        "Runs waiting for admission",
        "Admission wait (p50, p95)",
        "Workers: desired vs ready",
        "Throughput (samples/s)",
        "Loss",
        "Experiment progress (trials by state)",
    ):
        assert wanted in titles


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_expressions()
    assert len(queries) == sum(len(exprs(_load(p))) for p in DASHBOARDS) >= 30
    assert not [q for _, _, q in queries if "$" in q.replace('"$1"', "")]  # all variables filled
    rules = [
        {"record": f"accordion:dashboard_check:{i}", "expr": q}
        for i, (_, _, q) in enumerate(queries)
    ]
    path = tmp_path / "dashboard_exprs.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_only_documented_metrics_are_used() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`((?:accordion|DCGM)_[A-Za-z0-9_]+)`", doc))
    used = {m for p in DASHBOARDS for e in exprs(_load(p)) for m in METRIC.findall(e)}
    used |= {m for _, e in alert_expressions() for m in METRIC.findall(e)}
    base = {re.sub(r"_(bucket|count|sum)$", "", m) for m in used}
    assert base - documented == set()


def test_trainer_table_matches_the_trainer_metrics() -> None:
    from prometheus_client import REGISTRY

    import accordion_trainer.metrics  # noqa: F401 (registers the trainer's metrics)

    doc = (REPO / "docs" / "metrics.md").read_text()
    section = doc.split("## Trainer", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[0].strip("` "): cells[1].strip()
        for line in section.splitlines()
        if line.startswith("| `accordion_trainer_")
        for cells in [line.strip("|").split("|")]
    }
    exposed = {
        (f.name + "_total" if f.type == "counter" else f.name): f.type
        for f in REGISTRY.collect()
        if f.name.startswith("accordion_trainer_")
    }
    assert rows == exposed
