"""Every PromQL expression the chart ships, evaluated against a Prometheus as Grafana and
Prometheus would: which of them return data?

- Dashboard panels (`helm/accordion/files/dashboards/*.json`): each target of each panel, its
  template variables interpolated the way Grafana does when the dashboard opens (each variable
  at its saved value; `All` becomes the variable's `allValue`, a multi-value selection a regex
  alternation of escaped values; `$__interval`, `$__rate_interval`, `$__range` computed from
  the time range and the datasource's scrape interval; the `datasource` variable resolved to the
  Prometheus under test), then evaluated with `query_range` over the time range at the step
  Grafana would use, as a time-series panel does.
- Alert rules (`helm/accordion/files/alerts.yaml`): each `expr`, evaluated with `query_range` at
  the rule evaluation interval, which is what the rule saw at each evaluation. `strip` removes
  the final comparisons with a number (`> 0.1`, `== 1`), for conditions that do not hold in a
  healthy system but whose inputs must exist.

An expression "returns data" when at least one series has at least one finite value.

Used by `make demo` (summary at the end), the demo's e2e test (asserts that every expression
returns data after a real run) and the chart tests (which take the expressions from here).

    python -m accordion_dev.promcheck --prometheus http://127.0.0.1:16408 --minutes 15
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import yaml

from accordion_dev.cluster import REPO

CHART_FILES = REPO / "helm" / "accordion" / "files"
DASHBOARDS = CHART_FILES / "dashboards"
ALERTS = CHART_FILES / "alerts.yaml"
#: the local cluster's scrape and rule evaluation interval (accordion_dev.cluster); in Grafana,
#: the Prometheus datasource's "Scrape interval" setting
SCRAPE_INTERVAL = 2.0
#: Grafana asks for about one point per pixel of a panel; ~600 for a third of a wide screen
MAX_DATA_POINTS = 600
#: the value the `datasource` variable resolves to: the Prometheus under test
DATASOURCE = "prometheus-under-test"


# --- extraction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One query of one dashboard panel, as written (variables not interpolated)."""

    dashboard: str  # uid
    panel: str  # title
    ref: str  # refId
    expr: str
    legend: str
    datasource: Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    group: str
    alert: str
    expr: str
    for_: str


def dashboards() -> dict[str, dict[str, Any]]:
    """The shipped dashboards by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Panels with queries, in order; collapsed rows hold theirs inside."""
    out: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        out.extend(q for q in p.get("panels", []) if q.get("targets"))
        if p.get("type") != "row" and p.get("targets"):
            out.append(p)
    return out


def dashboard_targets(dashboard: Mapping[str, Any] | None = None) -> list[Target]:
    """Every target of every panel of `dashboard` (default: of every shipped dashboard)."""
    out = []
    for dash in [dashboard] if dashboard is not None else list(dashboards().values()):
        for p in panels(dash):
            for t in p["targets"]:
                out.append(
                    Target(
                        dash["uid"],
                        p["title"],
                        t.get("refId", ""),
                        t["expr"],
                        t.get("legendFormat", ""),
                        t.get("datasource") or p.get("datasource") or {},
                    )
                )
    return out


def alert_rules() -> list[Rule]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [
        Rule(g["name"], r["alert"], r["expr"].strip(), str(r.get("for", "0s")))
        for g in rules["groups"]
        for r in g["rules"]
        if "alert" in r
    ]


# --- Grafana's interpolation -----------------------------------------------------------------

#: Grafana's kbn.roundInterval: (below this many ms, use this interval in ms)
_ROUND = [
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000),
    (3_500, 2_000), (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000),
    (45_000, 30_000), (90_000, 60_000), (210_000, 120_000), (450_000, 300_000),
    (750_000, 600_000), (1_050_000, 900_000), (1_500_000, 1_200_000), (2_700_000, 1_800_000),
    (5_400_000, 3_600_000), (9_000_000, 7_200_000), (16_200_000, 10_800_000),
    (32_400_000, 21_600_000), (86_400_000, 43_200_000),
]  # fmt: skip


def _duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms % 1000:
        return f"{ms}ms"
    s = ms // 1000
    return f"{s // 60}m" if s >= 60 and s % 60 == 0 else f"{s}s"


def grafana_interval(
    start: float,
    end: float,
    scrape_interval: float = SCRAPE_INTERVAL,
    max_data_points: int = MAX_DATA_POINTS,
) -> float:
    """`$__interval` in seconds: the range over the points a panel draws, rounded the way
    Grafana rounds it, never below the datasource's scrape interval."""
    raw_ms = (end - start) * 1000 / max_data_points
    rounded = next((v for limit, v in _ROUND if raw_ms < limit), 86_400_000)
    return max(rounded / 1000, scrape_interval)


def builtins(start: float, end: float, scrape_interval: float = SCRAPE_INTERVAL) -> dict[str, str]:
    """Grafana's global variables for a time range (`$__rate_interval` as Grafana defines it:
    max(`$__interval` + scrape interval, 4 x scrape interval))."""
    interval = grafana_interval(start, end, scrape_interval)
    rng = max(1.0, end - start)
    return {
        "__interval": _duration(interval),
        "__interval_ms": str(round(interval * 1000)),
        "__rate_interval": _duration(max(interval + scrape_interval, 4 * scrape_interval)),
        "__range": _duration(round(rng)),
        "__range_s": str(round(rng)),
        "__range_ms": str(round(rng * 1000)),
    }


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in (dashboard.get("templating") or {}).get("list", [])}


def saved_values(dashboard: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each variable's value when the dashboard opens (its saved `current`)."""
    out = {}
    for name, var in variables(dashboard).items():
        value = (var.get("current") or {}).get("value")
        if var.get("type") == "datasource":
            value = DATASOURCE
        out[name] = value if isinstance(value, list) else [value] if value else []
    return out


def _regex_escape(value: str) -> str:
    # Grafana's prometheusRegularEscape: backslash-escape regex metacharacters (twice for the
    # PromQL string literal the value lands in)
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def formatted(var: Mapping[str, Any], value: list[str], options: Iterable[str] = ()) -> str:
    """A variable's value as Grafana's Prometheus datasource writes it into a query."""
    if var.get("type") == "datasource":
        return value[0] if value else DATASOURCE
    if value == ["$__all"]:
        if var.get("allValue"):
            return str(var["allValue"])
        value = list(options)
    if var.get("multi") or var.get("includeAll"):
        escaped = [_regex_escape(v) for v in value]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    return value[0] if value else ""


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")


def interpolate(expr: str, values: Mapping[str, str], globals_: Mapping[str, str]) -> str:
    """Replace `$var`, `${var}`, `${var:fmt}` and `[[var]]` as Grafana does. `$1` and the like
    (label_replace's capture references) are not variables and stay; any other unknown name is
    an error here (Grafana would send it to Prometheus verbatim: a panel without data)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in globals_:
            return globals_[name]
        if name in values:
            return values[name]
        if name.isdigit():
            return m.group(0)
        raise KeyError(f"unknown template variable ${name} in {expr!r}")

    return _VAR.sub(sub, expr)


def dashboard_values(
    dashboard: Mapping[str, Any], selected: Mapping[str, list[str]] | None = None
) -> dict[str, str]:
    """Every variable of `dashboard` formatted for a query: `selected` values (default: the
    saved ones), `All` as the variable's allValue."""
    chosen = {**saved_values(dashboard), **(selected or {})}
    return {
        name: formatted(var, chosen.get(name, [])) for name, var in variables(dashboard).items()
    }


def all_defaults() -> dict[str, str]:
    """The saved values of every shipped dashboard's variables, formatted (what a dashboard
    shows when opened: `All` everywhere)."""
    out: dict[str, str] = {}
    for dash in dashboards().values():
        out.update(dashboard_values(dash))
    return out


# --- evaluation ------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str  # "panel" | "alert" | "variable"
    where: str  # dashboard uid or rule group
    name: str  # panel title and refId, alert name or variable name
    expr: str  # what was evaluated
    series: int = 0
    points: int = 0  # finite values over all series
    error: str = ""
    values: tuple[str, ...] = ()  # a variable's options

    @property
    def ok(self) -> bool:
        return not self.error and self.points > 0


def query_range(
    prom: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{prom}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    )
    body = r.json()
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for_scrape(prom: str, job: str, after: float, timeout: float = 30) -> float:
    """Wait until Prometheus has scraped `job` at a time later than `after` (unix seconds) and
    return that scrape's time: a gauge set before `after` is then in Prometheus. The demo needs
    it because an Experiment's last gauges are set in the same operator pass that marks it done,
    and the dashboards are checked right after (one CI run saw no best objective yet)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(
            f"{prom}/api/v1/query", params={"query": f'timestamp(up{{job="{job}"}})'}, timeout=10
        )
        for s in r.json().get("data", {}).get("result", []):
            if float(s["value"][1]) > after:
                return float(s["value"][1])
        if time.monotonic() > deadline:
            raise TimeoutError(f"Prometheus did not scrape job {job!r} within {timeout:.0f} s")
        time.sleep(0.5)


def evaluate(
    prom: str, kind: str, where: str, name: str, expr: str, start: float, end: float, step: float
) -> Result:
    res = Result(kind, where, name, expr)
    try:
        series = query_range(prom, expr, start, end, step)
    except (httpx.HTTPError, ValueError) as e:
        res.error = str(e)
        return res
    res.series = len(series)
    res.points = sum(1 for s in series for _, v in s.get("values", []) if math.isfinite(float(v)))
    return res


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$")


def variable_options(
    prom: str, var: Mapping[str, Any], values: Mapping[str, str], start: float, end: float
) -> list[str]:
    """The options Grafana lists for a query variable (`label_values(selector, label)`)."""
    query = var.get("query")
    text = query.get("query", "") if isinstance(query, Mapping) else str(query or "")
    m = _LABEL_VALUES.match(interpolate(text, values, {}))
    if m is None:
        raise ValueError(f"variable {var.get('name')}: unsupported query {text!r}")
    selector, label = m.groups()
    params: dict[str, Any] = {"start": start, "end": end}
    if selector:
        params["match[]"] = selector
    r = httpx.get(f"{prom}/api/v1/label/{label}/values", params=params, timeout=30)
    r.raise_for_status()
    return sorted(r.json()["data"])


def check_dashboards(
    prom: str,
    start: float,
    end: float,
    *,
    scrape_interval: float = SCRAPE_INTERVAL,
    selected: Mapping[str, list[str]] | None = None,
) -> list[Result]:
    """Every variable's options and every panel target of every dashboard, over [start, end]."""
    glob = builtins(start, end, scrape_interval)
    step = grafana_interval(start, end, scrape_interval)
    out = []
    for dash in dashboards().values():
        values = dashboard_values(dash, selected)
        for name, var in variables(dash).items():
            if var.get("type") != "query":
                continue
            res = Result("variable", dash["uid"], name, str(var.get("definition", "")))
            try:
                res.values = tuple(variable_options(prom, var, values, start, end))
            except (httpx.HTTPError, ValueError) as e:
                res.error = str(e)
            res.series = res.points = len(res.values)
            out.append(res)
        for t in dashboard_targets(dash):
            name = f"{t.panel} [{t.ref}]"
            ds = interpolate(str(t.datasource.get("uid", "")), values, glob)
            if t.datasource.get("type") != "prometheus" or ds != DATASOURCE:
                out.append(Result("panel", t.dashboard, name, t.expr, error=f"datasource {ds!r}"))
                continue
            expr = interpolate(t.expr, values, glob)
            out.append(evaluate(prom, "panel", t.dashboard, name, expr, start, end, step))
    return out


_COMPARISON = re.compile(
    r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])"
)


def _string_end(expr: str, i: int) -> int:
    """Index just past the string literal that starts at `i`."""
    quote, j = expr[i], i + 1
    while j < len(expr) and expr[j] != quote:
        j += 2 if expr[j] == "\\" and quote != "`" else 1
    return j + 1


def strip_comparisons(expr: str) -> str:
    """`expr` without its comparisons against number literals, outside label matchers and
    strings: `a > 0.1` -> `a`, `(x >= 3 and on (n) y > 0)` -> `(x and on (n) y)`,
    `absent(up{job="x"} == 1)` -> `absent(up{job="x"})`."""
    out: list[str] = []
    plain_from = i = 0
    while i < len(expr):
        if expr[i] in "\"'`":
            end = _string_end(expr, i)
        elif expr[i] == "{":
            end = i + 1
            while end < len(expr) and expr[end] != "}":
                end = _string_end(expr, end) if expr[end] in "\"'`" else end + 1
            end += 1
        else:
            i += 1
            continue
        out += [_COMPARISON.sub("", expr[plain_from:i]), expr[i:end]]
        plain_from = i = end
    out.append(_COMPARISON.sub("", expr[plain_from:]))
    return "".join(out)


def check_alerts(
    prom: str,
    start: float,
    end: float,
    *,
    strip: Collection[str] = (),
    evaluation_interval: float = SCRAPE_INTERVAL,
) -> list[Result]:
    """Every alert expression over [start, end] at the rule evaluation interval; those named
    in `strip` without their comparisons."""
    out = []
    for rule in alert_rules():
        expr = strip_comparisons(rule.expr) if rule.alert in strip else rule.expr
        name = rule.alert + (" (comparison stripped)" if rule.alert in strip else "")
        out.append(evaluate(prom, "alert", rule.group, name, expr, start, end, evaluation_interval))
    return out


def summary(results: Iterable[Result], verbose: bool = True) -> str:
    """Per kind, how many returned data; every result (`verbose`) or those without data."""
    results = list(results)
    lines = []
    for kind in ("variable", "panel", "alert"):
        these = [r for r in results if r.kind == kind]
        if not these:
            continue
        ok = sum(r.ok for r in these)
        lines.append(f"{kind}s with data: {ok}/{len(these)}")
        for r in these:
            if r.ok and not verbose:
                continue
            mark = "ok  " if r.ok else "NONE"
            detail = r.error or (
                ", ".join(r.values) if kind == "variable" else f"{r.series} series, {r.points} pts"
            )
            lines.append(f"  {mark} {r.where}: {r.name}: {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accordion_dev.promcheck")
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--strip", action="append", default=[], help="alert to strip comparisons of")
    args = ap.parse_args(argv)
    end = time.time()
    start = end - args.minutes * 60
    results = check_dashboards(args.prometheus, start, end) + check_alerts(
        args.prometheus, start, end, strip=args.strip
    )
    print(summary(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
