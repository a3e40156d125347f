"""Chart test helpers (`import chartkit`): render helm/accordion with `helm template`, parse it.

This is the helm-unittest equivalent: each test renders the chart with some values and asserts on
the objects. helm comes from the pinned binary cache (`make deps-bin`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "accordion"
CACHE = Path(os.environ.get("ACCORDION_CACHE", Path.home() / ".cache" / "accordion"))

Obj = dict[str, Any]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(CACHE / "bin"))
    if found is None:
        raise AssertionError(f"{name} not found on PATH or in {CACHE / 'bin'}: run `make deps`")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("helm"), *args], capture_output=True, text=True, check=check, timeout=120
    )


def set_args(values: dict[str, str] | None) -> list[str]:
    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={value}"]
    return out


def render_text(values: dict[str, str] | None = None, *extra: str) -> str:
    """`helm template` output; values are --set-json pairs (JSON values: '2', '"x"', '["a"]')."""
    r = helm(
        "template", "acc", str(CHART), "--namespace", "accordion-system", *set_args(values), *extra
    )
    return r.stdout


def render(values: dict[str, str] | None = None, *extra: str) -> list[Obj]:
    """The release's objects, without the `helm test` hooks."""
    return [d for d in yaml.safe_load_all(render_text(values, "--skip-tests", *extra)) if d]


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def dashboard_expressions() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every panel target of every shipped dashboard,
    with Grafana's variables as Grafana fills them for 'All' and a 1m rate interval, ready to
    evaluate as instant queries. The extraction is `accordion_dev.promcheck`'s, which the
    demo's e2e test uses to evaluate the same expressions over a real run."""
    from accordion_dev import promcheck

    return [(t.dashboard, t.panel, concrete(t.expr)) for t in promcheck.dashboard_targets()]


def alert_expressions() -> list[tuple[str, str]]:
    """(alert name, PromQL) of every shipped alert."""
    from accordion_dev import promcheck

    return [(r.alert, r.expr) for r in promcheck.alert_rules()]


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would for 'All'."""
    from accordion_dev import promcheck

    return promcheck.interpolate(
        expr, promcheck.all_defaults(), {"__rate_interval": "1m", "__interval": "15s"}
    )
