"""The chart's alerts: promtool accepts them and every alert has promtool unit tests
(alerts_test.yaml) that fire on the bad case and stay quiet on the good one."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from chartkit import one, render, tool

HERE = Path(__file__).resolve().parent


def _rendered_rules(tmp_path: Path) -> Path:
    """The rules exactly as the chart ships them, as a plain rules file."""
    rule = one(render({"monitoring.prometheusRule.enabled": "true"}), "PrometheusRule")
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _alerts(spec: dict[str, Any]) -> set[str]:
    return {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_check_rules(tmp_path: Path) -> None:
    r = _promtool("check", "rules", str(_rendered_rules(tmp_path)), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 6 rules found" in r.stdout


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    _rendered_rules(tmp_path)
    (tmp_path / "alerts_test.yaml").write_text((HERE / "alerts_test.yaml").read_text())
    r = _promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test(tmp_path: Path) -> None:
    shipped = _alerts(yaml.safe_load(_rendered_rules(tmp_path).read_text()))
    assert shipped == {
        "AccordionRunPendingTooLong",
        "AccordionRunFailingRepeatedly",
        "AccordionGpusAllocatedButIdle",
        "AccordionOperatorDown",
        "AccordionReconcileErrors",
        "AccordionApiserverErrors",
    }
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]:
        for case in test["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fires == shipped
    # AccordionApiserverErrors' quiet case is the ignored 409 series next to the firing 403 one
    assert quiet >= shipped - {"AccordionApiserverErrors"}


def test_a_broken_threshold_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests have teeth: loosen one alert and they fail."""
    rules = _rendered_rules(tmp_path)
    rules.write_text(rules.read_text().replace("for: 30m", "for: 5m"))
    (tmp_path / "alerts_test.yaml").write_text((HERE / "alerts_test.yaml").read_text())
    r = _promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert r.returncode != 0
    assert "AccordionRunPendingTooLong" in r.stdout + r.stderr
