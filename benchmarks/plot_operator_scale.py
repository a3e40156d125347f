"""Plot the operator_scale results: worker pods created over time, one curve per result file.

    .venv/bin/python -m benchmarks.plot_operator_scale   # -> benchmarks/results/operator_scale.png

Reads every benchmarks/results/operator_scale*.json (written by benchmarks/operator_scale.py,
which `python -m benchmarks` runs before this, in name order).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the non-interactive backend

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    fig, ax = plt.subplots(figsize=(8, 4.5))
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
        if r["operator_peak_rss_mb"] is None:  # --floor: no operator
            ax.plot(t, pods, linestyle="--", label=f"{label}, floor: the writes without operator")
        else:
            ax.plot(t, pods, marker=".", label=f"{label}, RSS {r['operator_peak_rss_mb']:.0f} MB")
    ax.axvline(60, color="grey", linestyle=":", label="target: 10,000 runs in 60 s")
    ax.set_xlabel("seconds since the first run was created")
    ax.set_ylabel("worker pods created")
    ax.set_title("One-worker TrainingRuns admitted with pods (shared 2-core VM)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = RESULTS / "operator_scale.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
