"""Plot the operator_scale results: worker pods created over time, one curve per result file;
beside it, where the CPU went in the run with an apiserver profile (`--apiserver-profile`):
CPU-seconds by process, the apiserver's split by request path in its profile's proportions.

    .venv/bin/python -m benchmarks.plot_operator_scale   # -> benchmarks/results/operator_scale.png

Reads every benchmarks/results/operator_scale*.json (written by benchmarks/operator_scale.py,
which `python -m benchmarks` runs before this, in name order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the non-interactive backend
from matplotlib.axes import Axes

RESULTS = Path(__file__).resolve().parent / "results"


def where_the_cpu_goes(ax: Axes, r: dict[str, Any]) -> None:
    cpu: dict[str, float] = r["cpu_seconds_by_process"]
    split: dict[str, float] = r["apiserver_cpu_profile"]["by_request_path_pct"]
    procs = [p for p, v in cpu.items() if v >= 1]
    y = range(len(procs))
    ax.barh(y, [0 if p == "kube-apiserver" else cpu[p] for p in procs], color="dimgray")
    row = procs.index("kube-apiserver")
    left = 0.0
    cmap = plt.get_cmap("tab20")
    for i, (path, pct) in enumerate(split.items()):
        width = cpu["kube-apiserver"] * pct / 100
        ax.barh(row, width, left=left, color=cmap(i), label=f"{path} {pct:.0f} %")
        left += width
    ax.set_yticks(list(y), procs)
    ax.invert_yaxis()
    ax.set_xlabel("CPU-seconds")
    ax.set_title(
        f"Where the CPU went ({r['runs']:,} runs: {r['all_admitted_with_pods_seconds']:.0f} s)",
    )
    ax.legend(fontsize=6.5, loc="lower right", title="apiserver, by request path", title_fontsize=7)
    ax.grid(alpha=0.3, axis="x")


def main() -> int:
    fig, (ax, cpu_ax) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1.1, 1]})
    profiled = None
    for path in sorted(RESULTS.glob("operator_scale*.json")):
        r = json.loads(path.read_text())
        t, pods = zip(*r["progress"], strict=True)
        label = (
            f"{r['runs']:,} runs x {r['nodes']:,} nodes"
            f"{'' if r.get('monitoring') is False else ' (+ Prometheus)'}: "
            f"{r['all_admitted_with_pods_seconds']:.0f} s"
        )
        for k, v in r.get("operator_env", {}).items():
            label += f" ({k}={v})"
        if "apiserver_cpu_profile" in r:
            label += " (apiserver profiled)"
            profiled = r
        if r["operator_peak_rss_mb"] is None:  # --floor: no operator
            ax.plot(t, pods, linestyle="--", label=f"{label}, floor: the writes without operator")
        else:
            ax.plot(t, pods, marker=".", label=f"{label}, RSS {r['operator_peak_rss_mb']:.0f} MB")
    ax.axvline(60, color="grey", linestyle=":", label="target: 10,000 runs in 60 s")
    ax.set_xlabel("seconds since the first run was created")
    ax.set_ylabel("worker pods created")
    ax.set_title("One-worker TrainingRuns admitted with pods (shared 2-core VM)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if profiled is not None:
        where_the_cpu_goes(cpu_ax, profiled)
    else:
        cpu_ax.set_axis_off()
    out = RESULTS / "operator_scale.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
