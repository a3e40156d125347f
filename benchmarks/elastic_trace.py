"""Does elasticity pay? A Philly-like job trace replayed through Accordion's real allocator and
three static baselines, in simulated time (issue 20, parts 1-3; docs/elasticity.md).

    .venv/bin/python -m benchmarks.elastic_trace                      # 64 and 1,024 GPUs
    .venv/bin/python -m benchmarks.elastic_trace --gpus 64 --seed 1 --mix published
    .venv/bin/python -m benchmarks.elastic_trace --sensitivity        # 64 GPUs, what limits it

Writes, under benchmarks/results/: speedup_model.json (the measurements and the fitted model),
elastic_trace-<gpus>.{json,csv,png} (per class mix and policy: JCT avg/p50/p95, makespan,
queueing, GPU utilisation allocated and busy, rescales per job; the plot has GPU utilisation over
time and the JCT CDF per policy) and, with --sensitivity, elastic_trace-sensitivity.{json,csv}.
Pure computation: no cluster, no training, nothing sleeps.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.elastic.sim import POLICIES, SimConfig, SimResult, percentile, simulate
from benchmarks.elastic.speedup import SpeedupModel, build_model, model_document
from benchmarks.elastic.trace import DEFAULT_LOAD, MIN_DIVISOR, Job, generate, summary

RESULTS = Path(__file__).resolve().parent / "results"
#: jobs per trace by cluster size: long enough for the long jobs (up to 7 days, 78 % of the
#: GPU time) to fill the cluster, short enough for the 1,024-GPU replay to take minutes
DEFAULT_JOBS = {64: 2000, 1024: 16000}
#: jobs arriving in this fraction of the arrival span are the "steady" window (warm-up and
#: drain left out)
STEADY = (0.25, 0.75)


def machine() -> dict[str, Any]:
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": rev,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def default_jobs(gpus: int) -> int:
    """The table's count, else as many jobs per GPU as at 64 GPUs, within [200, the 1,024's]."""
    if gpus in DEFAULT_JOBS:
        return DEFAULT_JOBS[gpus]
    return min(DEFAULT_JOBS[1024], max(200, DEFAULT_JOBS[64] * gpus // 64))


def steady_summary(res: SimResult, jobs: Sequence[Job]) -> dict[str, float]:
    first, last = jobs[0].arrival, jobs[-1].arrival
    lo, hi = (first + f * (last - first) for f in STEADY)
    jcts = sorted(j.jct for j in res.jobs if lo <= j.arrival < hi)
    return {
        "jobs": len(jcts),
        "jct_avg_h": round(sum(jcts) / len(jcts) / 3600, 3) if jcts else math.nan,
        "jct_p95_h": round(percentile(jcts, 95) / 3600, 3) if jcts else math.nan,
    }


def hourly(res: SimResult) -> dict[str, list[float]]:
    """GPU utilisation (allocated, busy) as hourly averages of the step function."""
    tl = res.timeline
    end = max(j.end for j in res.jobs)
    hours = math.ceil(end / 3600)
    alloc = [0.0] * hours
    busy = [0.0] * hours
    for i, (t0, a, b) in enumerate(tl):
        t1 = tl[i + 1][0] if i + 1 < len(tl) else end
        while t0 < t1:
            h = int(t0 // 3600)
            if h >= hours:
                break
            step = min(t1, (h + 1) * 3600.0) - t0
            alloc[h] += a * step
            busy[h] += b * step
            t0 += step
    scale = 3600.0 * res.gpus
    return {
        "allocated": [round(v / scale, 4) for v in alloc],
        "busy": [round(v / scale, 4) for v in busy],
    }


def jct_cdf(res: SimResult) -> list[float]:
    """JCT (hours) at the 0th, 1st, ..., 100th percentile."""
    jcts = sorted(j.jct for j in res.jobs)
    return [round(percentile(jcts, q) / 3600, 4) for q in range(101)]


def reduction(new: float, old: float) -> float:
    return round(100 * (1 - new / old), 1) if old else math.nan


Reporter = Callable[[str, int], Callable[[int, int], None]]


def run_size(
    model: SpeedupModel,
    gpus: int,
    jobs_n: int,
    seed: int,
    load: float,
    mixes: Sequence[str],
    policies: Sequence[str],
    cfg: SimConfig,
    report: Reporter,
) -> tuple[dict[str, Any], dict[str, dict[str, SimResult]]]:
    doc: dict[str, Any] = {"mixes": {}}
    results: dict[str, dict[str, SimResult]] = {}
    for mix in mixes:
        jobs = generate(gpus, jobs_n, seed, model.mix(mix), load=load)
        per: dict[str, Any] = {}
        results[mix] = {}
        for policy in policies:
            t0 = time.process_time()
            res = simulate(
                jobs, model.classes, cfg, policy, report(f"{gpus} GPUs {mix} {policy}", len(jobs))
            )
            cpu = time.process_time() - t0
            results[mix][policy] = res
            per[policy] = {
                **res.summary(),
                "steady": steady_summary(res, jobs),
                "cpu_s": round(cpu, 1),
                "jct_cdf_h": jct_cdf(res),
                "utilisation_hourly": hourly(res),
            }
        comparison = {}
        if "elastic" in per:
            for base in policies:
                if base != "elastic":
                    comparison[f"elastic_vs_{base}"] = {
                        "jct_avg_reduction_pct": reduction(
                            per["elastic"]["jct_avg_h"], per[base]["jct_avg_h"]
                        ),
                        "jct_p95_reduction_pct": reduction(
                            per["elastic"]["jct_p95_h"], per[base]["jct_p95_h"]
                        ),
                        "steady_jct_avg_reduction_pct": reduction(
                            per["elastic"]["steady"]["jct_avg_h"], per[base]["steady"]["jct_avg_h"]
                        ),
                    }
        doc["mixes"][mix] = {
            "trace": summary(jobs, gpus),
            "policies": per,
            "comparison": comparison,
        }
    return doc, results


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def summary_rows(doc: dict[str, Any], gpus: int) -> list[dict[str, Any]]:
    keys = (
        "jct_avg_h",
        "jct_p50_h",
        "jct_p95_h",
        "makespan_h",
        "queue_avg_h",
        "util_allocated",
        "util_busy",
        "rescales_per_job",
        "rescales_per_elastic_job",
    )
    rows = []
    for mix, m in doc["mixes"].items():
        for policy, p in m["policies"].items():
            rows.append(
                {
                    "gpus": gpus,
                    "mix": mix,
                    "policy": policy,
                    **{k: p[k] for k in keys},
                    "steady_jct_avg_h": p["steady"]["jct_avg_h"],
                    "steady_jct_p95_h": p["steady"]["jct_p95_h"],
                }
            )
    return rows


def plot(
    path: Path, gpus: int, results: dict[str, dict[str, SimResult]], doc: dict[str, Any]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = list(results)
    fig, axes = plt.subplots(len(mixes), 2, figsize=(13, 4.2 * len(mixes)), squeeze=False)
    colors = {"elastic": "C0", "static-max": "C3", "static-min": "C2", "fifo-easy": "C1"}
    for row, mix in enumerate(mixes):
        ax_u, ax_c = axes[row]
        for policy, res in results[mix].items():
            series = doc["mixes"][mix]["policies"][policy]["utilisation_hourly"]
            hours = range(len(series["allocated"]))
            ax_u.plot(
                hours,
                series["allocated"],
                color=colors.get(policy),
                lw=1,
                label=f"{policy} allocated",
            )
            ax_u.plot(hours, series["busy"], color=colors.get(policy), lw=0.8, ls=":", alpha=0.8)
            jcts = sorted(j.jct / 3600 for j in res.jobs)
            n = len(jcts)
            ax_c.step(
                jcts,
                [(i + 1) / n for i in range(n)],
                where="post",
                color=colors.get(policy),
                label=f"{policy} (avg {sum(jcts) / n:.1f} h)",
            )
        ax_u.set_title(
            f"{gpus} GPUs, {mix} scaling: GPU utilisation (solid allocated, dotted busy)"
        )
        ax_u.set_xlabel("hours since the first arrival")
        ax_u.set_ylabel("share of the cluster's GPUs")
        ax_u.set_ylim(0, 1.05)
        ax_u.legend(fontsize=7, loc="lower right")
        ax_c.set_title(f"{gpus} GPUs, {mix} scaling: job completion time CDF")
        ax_c.set_xscale("log")
        ax_c.set_xlabel("JCT (hours, log scale)")
        ax_c.set_ylabel("share of jobs")
        ax_c.legend(fontsize=7, loc="lower right")
        ax_c.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- sensitivity: what limits the gain ------------------------------------------------------------


def sensitivity(model: SpeedupModel, seed: int, report: Reporter) -> dict[str, Any]:
    """One knob at a time, at 64 GPUs, both mixes: each variant against the default."""
    gpus = 64
    jobs_n = default_jobs(gpus)
    variants: list[tuple[str, dict[str, Any]]] = [("default", {})]
    variants += [(f"load={v}", {"load": v}) for v in (0.6, 1.2)]
    variants += [(f"grow_pause={v}s", {"grow_pause_s": v}) for v in (15.0, 60.0, 300.0)]
    variants += [(f"cooldown={v}s", {"cooldown": v}) for v in (0.0, 120.0)]
    variants += [(f"min=ceil(max/{v})", {"min_divisor": v}) for v in (2, 8)]
    variants += [("alpha=medians", {"alpha_medians": True})]
    variants += [("max=2x request", {"max_factor": 2})]
    out: dict[str, Any] = {"gpus": gpus, "jobs": jobs_n, "seed": seed, "variants": {}}
    rows = []
    for mix in model.mixes:
        for name, v in variants:
            if v.get("alpha_medians") and mix != "measured":
                continue
            classes = dict(model.classes)
            if v.get("alpha_medians"):
                from benchmarks.elastic.speedup import ModelClass

                a = model.detail["measured_fit"]["alpha_from_medians"]
                c = classes["mnist-cnn-process-node"]
                classes[c.name] = ModelClass(c.name, a, c.grow_pause_s, c.shrink_pause_s)
            jobs = generate(
                gpus,
                jobs_n,
                seed,
                model.mix(mix),
                load=v.get("load", DEFAULT_LOAD),
                min_divisor=v.get("min_divisor", MIN_DIVISOR),
                max_factor=v.get("max_factor", 1),
            )
            cfg = SimConfig(
                gpus,
                cooldown=v.get("cooldown", 30.0),
                grow_pause_s=v.get("grow_pause_s"),
            )
            # the static baselines only change with the trace (load, min) and the model
            policies = (
                POLICIES
                if name == "default"
                or {"load", "min_divisor", "alpha_medians", "max_factor"} & set(v)
                else ("elastic",)
            )
            per = {}
            for policy in policies:
                res = simulate(
                    jobs,
                    classes,
                    cfg,
                    policy,
                    report(f"sensitivity {mix} {name} {policy}", len(jobs)),
                )
                per[policy] = {**res.summary(), "steady": steady_summary(res, jobs)}
            out["variants"].setdefault(mix, {})[name] = per
            for policy, s in per.items():
                rows.append(
                    {
                        "mix": mix,
                        "variant": name,
                        "policy": policy,
                        "jct_avg_h": s["jct_avg_h"],
                        "jct_p95_h": s["jct_p95_h"],
                        "queue_avg_h": s["queue_avg_h"],
                        "util_allocated": s["util_allocated"],
                        "util_busy": s["util_busy"],
                        "rescales_per_elastic_job": s["rescales_per_elastic_job"],
                    }
                )
    out["rows"] = rows
    return out


# --- command line --------------------------------------------------------------------------------


def reporter(enabled: bool) -> tuple[Any, Reporter]:
    """A rich progress bar per simulation (jobs completed), or nothing."""
    if not enabled:
        return None, lambda _name, _total: lambda _done, _total: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )

    def make(name: str, total: int) -> Callable[[int, int], None]:
        task = bar.add_task(name, total=total)
        return lambda done, _total: bar.update(task, completed=done)

    return bar, make


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--gpus", type=int, action="append", help="cluster size (repeatable; default 64 and 1024)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--jobs", type=int, default=None, help=f"jobs per trace (default {DEFAULT_JOBS})"
    )
    ap.add_argument(
        "--load", type=float, default=DEFAULT_LOAD, help="offered load (requested GPU-s / capacity)"
    )
    ap.add_argument(
        "--mix", action="append", choices=("measured", "published"), help="class mix (default both)"
    )
    ap.add_argument("--policy", action="append", choices=POLICIES, help="policies (default all)")
    ap.add_argument("--cooldown", type=float, default=30.0)
    ap.add_argument("--tick", type=float, default=30.0)
    ap.add_argument("--sensitivity", action="store_true", help="only the 64-GPU sensitivity sweep")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    model = build_model()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "speedup_model.json").write_text(json.dumps(model_document(model), indent=1) + "\n")
    bar, report = reporter(not a.no_progress and sys.stderr.isatty())
    if bar is not None:
        bar.start()
    try:
        if a.sensitivity:
            t0 = time.perf_counter()
            doc = sensitivity(model, a.seed, report)
            doc = {
                "benchmark": "elastic_trace-sensitivity",
                "machine": machine(),
                **doc,
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            (a.out / "elastic_trace-sensitivity.json").write_text(json.dumps(doc, indent=1) + "\n")
            write_csv(a.out / "elastic_trace-sensitivity.csv", doc["rows"])
            print(f"[bench] wrote {a.out / 'elastic_trace-sensitivity.json'}")
            return 0
        for gpus in a.gpus or [64, 1024]:
            t0 = time.perf_counter()
            # a non-default load gets its own files next to the headline ones
            tag = "" if a.load == DEFAULT_LOAD else f"-load{a.load:g}"
            jobs_n = a.jobs or default_jobs(gpus)
            cfg = SimConfig(gpus, cooldown=a.cooldown, tick=a.tick)
            doc, results = run_size(
                model,
                gpus,
                jobs_n,
                a.seed,
                a.load,
                a.mix or ["measured", "published"],
                a.policy or list(POLICIES),
                cfg,
                report,
            )
            doc = {
                "benchmark": f"elastic_trace-{gpus}{tag}",
                "machine": machine(),
                "params": {
                    "gpus": gpus,
                    "gpus_per_node": cfg.gpus_per_node,
                    "jobs": jobs_n,
                    "seed": a.seed,
                    "load": a.load,
                    "cooldown_s": cfg.cooldown,
                    "tick_s": cfg.tick,
                    "min_rule": f"min = ceil(max / {MIN_DIVISOR}), max = requested GPUs",
                    "steady_window": list(STEADY),
                },
                **doc,
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            stem = a.out / f"elastic_trace-{gpus}{tag}"
            stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
            write_csv(stem.with_suffix(".csv"), summary_rows(doc, gpus))
            if not a.no_plot:
                plot(stem.with_suffix(".png"), gpus, results, doc)
            for mix, m in doc["mixes"].items():
                for policy, p in m["policies"].items():
                    print(
                        f"[bench] {gpus} GPUs {mix:9} {policy:10} JCT avg {p['jct_avg_h']:7.2f} h "
                        f"p95 {p['jct_p95_h']:7.2f} h  queue {p['queue_avg_h']:6.2f} h  "
                        f"util {p['util_allocated']:.2f}/{p['util_busy']:.2f}  "
                        f"rescales/elastic job {p['rescales_per_elastic_job']:.1f}"
                    )
                for k, c in m["comparison"].items():
                    print(
                        f"[bench] {gpus} GPUs {mix:9} {k}: avg JCT -{c['jct_avg_reduction_pct']}%"
                    )
            print(f"[bench] wrote {stem}.{{json,csv,png}} in {doc['wall_s']} s")
    finally:
        if bar is not None:
            bar.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
