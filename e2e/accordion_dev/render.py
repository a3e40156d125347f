"""Render the shipped Grafana dashboards' panels to PNG from a Prometheus, without Grafana.

Each panel's PromQL (template variables widened to match everything) is evaluated with
`query_range` over a time window and drawn with matplotlib, one PNG per dashboard, so a reviewer
can see the curves a real run produced.

    python -m accordion_dev.render --prometheus http://127.0.0.1:16408 --minutes 15 --out artifacts
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import httpx

from accordion_dev.cluster import REPO

DASHBOARDS = REPO / "helm" / "accordion" / "files" / "dashboards"
_VARS = {
    "$__rate_interval": "30s",
    "$__interval": "10s",
    "$__range": "15m",
}


def concrete(expr: str) -> str:
    """Replace Grafana's template variables: built-ins by durations, ours by `.*`."""
    for var, value in _VARS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard.get("panels", []):
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
        if p.get("type") != "row" and p.get("targets"):
            out.append(p)
    return out


def query_range(prom: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    step = max(2.0, (end - start) / 300)
    r = httpx.get(
        f"{prom}/api/v1/query_range",
        timeout=30,
        params={"query": concrete(expr), "start": start, "end": end, "step": step},
    )
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def _label(metric: dict[str, str], legend: str | None) -> str:
    if legend:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), legend)
    keep = {k: v for k, v in metric.items() if k not in ("__name__", "job", "instance")}
    return ",".join(f"{k}={v}" for k, v in sorted(keep.items())) or metric.get("__name__", "")


def render(prom: str, out: Path, minutes: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time()
    start = end - minutes * 60
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        ps = panels(dash)
        cols = 3
        rows = math.ceil(len(ps) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, ps, strict=False):
            n = 0
            for target in panel["targets"]:
                for series in query_range(prom, target["expr"], start, end):
                    xs = [float(t) - end for t, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    ax.plot(
                        [x / 60 for x in xs],
                        ys,
                        label=_label(series["metric"], target.get("legendFormat"))[:40],
                    )
                    n += 1
            ax.set_title(panel.get("title", ""), fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("minutes ago", fontsize=7)
            if n == 0:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            elif n <= 6:
                ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(ps) :]:
            ax.axis("off")
        fig.suptitle(dash.get("title", path.stem))
        fig.tight_layout()
        png = out / f"{path.stem}.png"
        fig.savefig(png, dpi=80)
        plt.close(fig)
        written.append(png)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m accordion_dev.render")
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--out", default="artifacts/dashboards")
    args = ap.parse_args()
    for png in render(args.prometheus, Path(args.out), args.minutes):
        print(png)


if __name__ == "__main__":
    main()
