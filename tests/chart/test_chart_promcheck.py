"""`accordion_dev.promcheck`, which the e2e test uses to evaluate every shipped expression:
extraction, Grafana's interpolation and the stripping of alert comparisons (no Prometheus)."""

from __future__ import annotations

import json
import re

import pytest
from chartkit import CHART

from accordion_dev import promcheck


def test_every_target_of_every_dashboard_is_extracted() -> None:
    in_json = [
        t["expr"]
        for path in sorted((CHART / "files" / "dashboards").glob("*.json"))
        for p in json.loads(path.read_text())["panels"]
        for t in p.get("targets", [])
    ]
    assert [t.expr for t in promcheck.dashboard_targets()] == in_json
    assert len(promcheck.alert_rules()) == 6


def test_interpolation_as_grafana_does_it() -> None:
    dash = promcheck.dashboards()["accordion-runs"]
    values = promcheck.dashboard_values(dash)
    assert values == {"datasource": promcheck.DATASOURCE, "namespace": ".*", "run": ".*"}
    glob = promcheck.builtins(0, 600)  # 10 min over ~600 px: 1 s, not below the 2 s scrape
    assert (glob["__interval"], glob["__rate_interval"], glob["__range"]) == ("2s", "8s", "10m")
    glob = promcheck.builtins(0, 6 * 3600)
    assert (glob["__interval"], glob["__rate_interval"]) == ("30s", "32s")
    expr = 'rate(x{namespace=~"$namespace", run=~"${run}"}[$__rate_interval]) + "$1"'
    assert promcheck.interpolate(expr, values, promcheck.builtins(0, 600)) == (
        'rate(x{namespace=~".*", run=~".*"}[8s]) + "$1"'
    )
    with pytest.raises(KeyError, match="nope"):
        promcheck.interpolate("x{a=~'$nope'}", values, glob)
    var = promcheck.variables(dash)["run"]
    # a selection: regex-escaped values, alternated when more than one
    assert promcheck.formatted(var, ["mnist.v2"]) == "mnist\\\\.v2"
    assert promcheck.formatted(var, ["a", "b"]) == "(a|b)"
    assert promcheck.formatted({**var, "allValue": None}, ["$__all"], ["a", "b"]) == "(a|b)"


def test_every_panel_uses_the_datasource_variable_and_known_variables_only() -> None:
    for dash in promcheck.dashboards().values():
        values = promcheck.dashboard_values(dash)
        for t in promcheck.dashboard_targets(dash):
            assert promcheck.interpolate(t.datasource["uid"], values, {}) == promcheck.DATASOURCE
            promcheck.interpolate(t.expr, values, promcheck.builtins(0, 600))  # no KeyError


def test_stripping_removes_only_comparisons_with_numbers() -> None:
    strip = promcheck.strip_comparisons
    assert (
        strip('absent(up{job="accordion-operator"} == 1)') == 'absent(up{job="accordion-operator"})'
    )
    assert strip('x{code!~"404|409", a=">5"} > 0.05') == 'x{code!~"404|409", a=">5"}'
    assert strip("(a >= 3 and on (n) b > 0) unless c") == "(a and on (n) b) unless c"
    assert strip("a / b > bool 1e-3") == "a / b"
    assert strip("a > b") == "a > b"  # a comparison of two vectors is not a threshold
    for rule in promcheck.alert_rules():
        stripped = strip(rule.expr)
        assert not re.search(r"(==|!=|>=|<=|>|<)\s*[0-9.]+\s*($|\n|\)|and|unless)", stripped)
