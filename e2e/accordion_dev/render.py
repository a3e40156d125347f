"""Render the shipped Grafana dashboards' panels to PNG from a Prometheus, without Grafana.

Each panel's PromQL is interpolated as Grafana would when the dashboard opens (every variable
at `All`, `$__rate_interval` from the window and the scrape interval: `accordion_dev.promcheck`),
evaluated with `query_range` over a time window and drawn with matplotlib, one PNG per
dashboard, so a reviewer can see the curves a real run produced.

    python -m accordion_dev.render --prometheus http://127.0.0.1:16408 --minutes 15 --out artifacts
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

from accordion_dev import promcheck


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
    step = max(promcheck.grafana_interval(start, end), (end - start) / 300)
    glob = promcheck.builtins(start, end)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, dash in promcheck.dashboards().items():
        values = promcheck.dashboard_values(dash)
        ps = promcheck.panels(dash)
        cols = 3
        rows = math.ceil(len(ps) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), squeeze=False)
        for ax, panel in zip(axes.flat, ps, strict=False):
            n = 0
            for target in panel["targets"]:
                expr = promcheck.interpolate(target["expr"], values, glob)
                for series in promcheck.query_range(prom, expr, start, end, step):
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
        fig.suptitle(dash.get("title", stem))
        fig.tight_layout()
        png = out / f"{stem}.png"
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
