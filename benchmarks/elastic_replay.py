"""The trace of benchmarks.elastic_trace on the real stack, small (issue 20, part 4).

    flock /tmp/accordion-cluster.lock .venv/bin/python -m benchmarks.elastic_replay

200 jobs of the Philly-statistics generator (benchmarks/elastic/trace.py, seed 1, the measured
scaling class, arrivals at offered load 3: a burst of 29 trace hours that queues, so that the
allocator has decisions to make) go through the real operator, apiserver, scheduler and kwok
(8 simulated nodes of 8 GPUs) with a compressed clock: one trace hour is `--hour-s` real seconds
(1.5: a pass takes about 5 minutes). Each job is a TrainingRun created at its arrival; its
launcher is played by `accordion_dev.playact` (trains at the speedup model's rate for the Ready
workers it sees, pauses per rescale, reports progress, exits 0 when the work is done). Two
passes on fresh clusters: `elastic` (min..max as the trace says) and `static` (min == max == the
request). The same trace then goes through the simulator (benchmarks/elastic/sim.py) with the
operator's settings scaled to trace time (cooldown and resync x the compression) and with the
control plane's delays that the replay measured (`SimConfig.start_delay_s` / `release_delay_s`;
`--no-delays` leaves them out), and the figures are compared: the average JCT of each policy
must agree within `TOLERANCE`. `--reuse RESULT.json` simulates again against the real passes
of an earlier run, without a cluster.

Writes benchmarks/results/elastic_replay-64.{json,csv,png}: per policy, real and simulated,
average / p50 / p95 JCT, makespan, queueing, GPU utilisation (allocated and busy), rescales per
job; the measured delays; the load average of the shared machine; the plot has the JCT CDFs and
the allocated GPUs over time, real against simulated.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.playact import PlayedRun, Player
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body
from benchmarks._common import RESULTS, machine, prepare_namespaces
from benchmarks.elastic.sim import JobRecord, SimConfig, SimResult, percentile, simulate
from benchmarks.elastic.speedup import ModelClass, build_model
from benchmarks.elastic.trace import Job, generate, summary

NAMESPACE = "trace"
NODES, GPUS_PER_NODE = 8, 8
#: the replay's average JCT must be within this fraction of the simulator's, per policy
TOLERANCE = 0.15
#: a start's stages: arrival -> the benchmark's POST answered -> the first worker pod in the
#: watch (the operator's pass) -> bound (the scheduler) -> Ready (kwok) -> the world formed
#: (the player's discovery, its settle time and its loop)
STAGES = ("create", "operator", "scheduler", "kwok", "discovery")
#: what the replay and the simulator compare
FIGURES = (
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


@dataclass(frozen=True)
class Settings:
    jobs: int
    seed: int
    load: float
    mix: str
    #: real seconds per trace hour
    hour_s: float
    #: the operator's ACCORDION_SCALE_COOLDOWN_SECONDS and ACCORDION_RESYNC_SECONDS (real)
    cooldown_s: float
    resync_s: float
    #: the player's poll of its pod cache (real seconds; the real launcher's discovery: 0.25-0.5)
    tick_s: float
    #: how long a new count of Ready workers must hold before the player's launcher takes it
    settle_s: float
    epochs: int

    @property
    def compression(self) -> float:
        """Trace seconds per real second."""
        return 3600.0 / self.hour_s


def policy_bounds(job: Job, policy: str) -> tuple[int, int]:
    return (job.min, job.max) if policy == "elastic" else (job.request, job.request)


def start_operator(cluster: Cluster, s: Settings, log: Path) -> subprocess.Popen[bytes]:
    port = free_port_block(first=cluster.config.base_port + 9, size=2)
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "ACCORDION_HEALTH_PORT": str(port),
        "ACCORDION_OPERATOR_METRICS_PORT": str(port + 1),
        "ACCORDION_SCALE_COOLDOWN_SECONDS": str(s.cooldown_s),
        "ACCORDION_RESYNC_SECONDS": str(s.resync_s),
        # the runs name a fake endpoint (minio.local:9000); one process, nothing to elect
        "ACCORDION_STORAGE_PREFLIGHT": "false",
        "ACCORDION_LEADER_ELECTION": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "accordion_operator"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited: {log.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    poll(healthy, 60, what="operator /healthz")
    return proc


def replay_pass(
    jobs: Sequence[Job], classes: dict[str, ModelClass], s: Settings, policy: str
) -> dict[str, Any]:
    """One pass on a fresh cluster: the records in trace seconds since the first arrival."""
    with tempfile.TemporaryDirectory(prefix="accordion-replay-") as tmp:
        cluster = Cluster(
            ClusterConfig(
                state_dir=Path(tmp),
                base_port=free_port_block(first=23400),
                kwok_nodes=NODES,
                gpus_per_node=GPUS_PER_NODE,
                monitoring=False,
            )
        )
        cluster.up(log=lambda line: print(line, flush=True))
        op: subprocess.Popen[bytes] | None = None
        try:
            prepare_namespaces(cluster, [NAMESPACE])
            op = start_operator(cluster, s, Path(tmp) / "operator.log")
            with cluster.http() as http, cluster.http(timeout=None) as watch_http:
                out = _play(http, watch_http, jobs, classes, s, policy)
            out["operator_cpu_s"] = _cpu_seconds(op.pid)
            return out
        finally:
            if op is not None:
                op.terminate()
                op.wait(20)
            cluster.down()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return round(sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK"), 1)


def _play(
    http: httpx.Client,
    watch_http: httpx.Client,
    jobs: Sequence[Job],
    classes: dict[str, ModelClass],
    s: Settings,
    policy: str,
) -> dict[str, Any]:
    c = s.compression
    player = Player(http, watch_http, NAMESPACE)
    pending = sorted(jobs, key=lambda j: (j.arrival, j.id))
    by_name = {f"job-{j.id:06d}": j for j in jobs}
    lags: list[float] = []
    created: dict[str, tuple[float, float]] = {}  # run: (due, POST answered)
    # runs are created from threads, so that a slow apiserver delays neither the next arrival
    # nor the player's view of the runs already there
    creator = ThreadPoolExecutor(4, thread_name_prefix="replay-create")
    posts: list[Future[None]] = []

    def create(name: str, body: dict[str, Any], due: float) -> None:
        r = http.post(
            f"/apis/accordion.dev/v1alpha1/namespaces/{NAMESPACE}/trainingruns", json=body
        )
        r.raise_for_status()
        created[name] = (due, time.time())

    loads: list[float] = [os.getloadavg()[0]]
    timeline: list[tuple[float, int, float]] = []
    alloc_s = busy_s = 0.0
    alloc = max_alloc = 0
    busy = 0.0
    t0 = time.time() + 1.0
    last = t0
    nxt = 0
    all_ended: float | None = None
    try:
        while nxt < len(pending) or len(player.released) < len(jobs):
            now = time.time()
            if player.ended == len(jobs):
                all_ended = all_ended or now
                if now - all_ended > 60:  # some run's pods never went: its release is left out
                    break
            while nxt < len(pending) and t0 + pending[nxt].arrival / c <= now:
                job = pending[nxt]
                name = f"job-{job.id:06d}"
                lo, hi = policy_bounds(job, policy)
                cls = classes[job.model]
                body = run_body(name, lo=lo, hi=hi)
                due = t0 + job.arrival / c
                lags.append(time.time() - due)
                posts.append(creator.submit(create, name, body, due))
                player.add(
                    PlayedRun(
                        name=name,
                        work=job.duration / c,
                        ref_workers=job.request,
                        min_workers=lo,
                        speedup=cls.speedup,
                        grow_pause=cls.grow_pause_s / c,
                        shrink_pause=cls.shrink_pause_s / c,
                        epochs=s.epochs,
                        settle=s.settle_s,
                    )
                )
                nxt += 1
            for f in [f for f in posts if f.done()]:
                f.result()  # a refused creation raises here
                posts.remove(f)
            now = time.time()
            player.step(now)
            if now > t0 and all_ended is None:  # utilisation until the last job's end
                alloc_s += alloc * (now - max(last, t0))  # the GPUs held since the last step
                busy_s += busy * (now - max(last, t0))
                last = now
                _, _, bound = player.world_pods()
                alloc = sum(bound.values())
                busy = sum(r.speedup(r.world) for r in player.runs.values() if r.training(now))
                max_alloc = max(max_alloc, alloc)
                point = ((now - t0) * c, alloc, round(busy, 6))
                if not timeline or timeline[-1][1:] != point[1:]:
                    timeline.append(point)
            if int(now - t0) % 10 == 0 and len(loads) <= int(now - t0) // 10:
                loads.append(os.getloadavg()[0])
                running = sum(1 for r in player.runs.values() if r.training(now))
                print(
                    f"[replay] {policy} t={now - t0:6.1f} s ({(now - t0) / s.hour_s:6.1f} trace h)"
                    f" created {nxt}/{len(jobs)} finished {player.ended}"
                    f" training {running} GPUs {alloc}",
                    flush=True,
                )
            wake = t0 + pending[nxt].arrival / c if nxt < len(pending) else now + s.tick_s
            time.sleep(max(0.0, min(wake, now + s.tick_s) - time.time()))
    finally:
        creator.shutdown(wait=True)
        player.close()
    records = []
    for name, run in player.runs.items():
        job = by_name[name]
        assert run.started is not None
        assert run.finished is not None
        lo, hi = policy_bounds(job, policy)
        records.append(
            JobRecord(
                id=job.id,
                arrival=job.arrival,
                start=(run.started - t0) * c,
                end=(run.finished - t0) * c,
                max=hi,
                min=lo,
                model=job.model,
                work=job.work,
                done=job.work * run.done / run.work,
                rescales=run.rescales,
                grows=run.grows,
                shrinks=run.shrinks,
                preemptions=run.preemptions,
            )
        )
    result = SimResult(
        policy=policy,
        gpus=NODES * GPUS_PER_NODE,
        jobs=sorted(records, key=lambda r: r.id),
        timeline=timeline,
        allocated_gpu_s=alloc_s * c,
        busy_gpu_s=busy_s * c,
        max_allocated=max_alloc,
        decisions=0,
    )
    releases = sorted(player.released[n] - r.finished for n, r in player.runs.items() if r.finished)
    stages = {}
    for name, run in player.runs.items():
        due, answered = created[name]
        first = player.first.get(name, {})
        marks = [
            due,
            answered,
            first.get("pod"),
            first.get("bound"),
            first.get("ready"),
            run.started,
        ]
        if all(m is not None for m in marks):
            stages[str(by_name[name].id)] = [round(b - a, 4) for a, b in itertools.pairwise(marks)]
    return {
        "result": result,
        "release_s": [round(v, 4) for v in releases],
        "stages_s": stages,
        "create_lag_s": {
            "mean": round(statistics.fmean(lags), 4),
            "max": round(max(lags), 4),
        },
        "load_avg_1m": {
            "min": min(loads),
            "mean": round(statistics.fmean(loads), 2),
            "max": max(loads),
        },
        "wall_s": round(time.time() - t0, 1),
    }


def control_plane_delays(
    reals: dict[str, SimResult],
    plains: dict[str, SimResult],
    extras: dict[str, dict[str, Any]],
    s: Settings,
) -> dict[str, Any]:
    """The control plane's delays as the replay saw them (real seconds), pooled over the passes.

    * start: arrival to the first training step of the jobs that the simulator, without delays,
      starts on arrival (so nothing but the stack held them): the operator's noticing the run
      and its pass, the pods' creation, scheduling, kwok's Ready, the player's discovery;
    * release: from a job's end (its launcher's exit) until its worker pods are gone, as the
      player's pod watch saw it: the operator's noticing the exit, marking the run Succeeded
      and deleting the pods, which the allocator counts as load until they are gone. (Who gets
      the GPUs then waits for the next pass and the start delay, as a newcomer does.)
    """
    c = s.compression
    starts: list[float] = []
    for policy, real in reals.items():
        plain = {j.id: j for j in plains[policy].jobs}
        starts += [
            (j.start - j.arrival) / c for j in real.jobs if plain[j.id].start == plain[j.id].arrival
        ]
    releases = sorted(v for e in extras.values() for v in e["release_s"])
    starts.sort()
    # where a start's time goes, for the same jobs
    columns: list[list[float]] = [[] for _ in STAGES]
    for policy in reals:
        plain = {j.id: j for j in plains[policy].jobs}
        for jid, row in extras[policy].get("stages_s", {}).items():
            if plain[int(jid)].start == plain[int(jid)].arrival:
                for col, v in zip(columns, row, strict=True):
                    col.append(v)
    return {
        "start_stages_p50_p90_s": {
            stage: [round(percentile(sorted(col), q), 3) for q in (50, 90)]
            for stage, col in zip(STAGES, columns, strict=True)
            if col
        },
        "start_s": round(percentile(starts, 50), 3),
        "start_p10_p90_s": [round(percentile(starts, q), 3) for q in (10, 90)],
        "start_samples": len(starts),
        "release_s": round(percentile(releases, 50), 3),
        "release_p10_p90_s": [round(percentile(releases, q), 3) for q in (10, 90)],
        "release_samples": len(releases),
    }


def visible_rescales(res: SimResult, window: float) -> tuple[int, int]:
    """(rescales, those a stack with `window` seconds of latency would carry out): changes of
    a job's grant less than `window` apart merge into one from the first old size to the last
    new one, which is no rescale if the sizes are equal (a grow taken back before its pods
    were Ready) or one of them is 0 (admission, the end)."""
    total = visible = 0
    for changes in res.grant_changes.values():
        total += sum(1 for _, old, new in changes if old and new)
        i = 0
        while i < len(changes):
            t, first_old, new = changes[i]
            while i + 1 < len(changes) and changes[i + 1][0] - t < window:
                i += 1
                t, _, new = changes[i]
            visible += bool(first_old and new and first_old != new)
            i += 1
    return total, visible


def record_dicts(res: SimResult) -> list[dict[str, Any]]:
    return [dataclasses.asdict(j) for j in res.jobs]


def from_dicts(policy: str, doc: dict[str, Any]) -> SimResult:
    """A pass's real result as the JSON keeps it (`--reuse`)."""
    return SimResult(
        policy=policy,
        gpus=NODES * GPUS_PER_NODE,
        jobs=[JobRecord(**j) for j in doc["jobs"]],
        timeline=[(t, a, b) for t, a, b in doc["timeline"]],
        allocated_gpu_s=doc["allocated_gpu_s"],
        busy_gpu_s=doc["busy_gpu_s"],
        max_allocated=doc["max_allocated"],
        decisions=0,
    )


def jct_cdf(res: SimResult) -> list[float]:
    jcts = sorted(j.jct for j in res.jobs)
    return [round(percentile(jcts, q) / 3600, 4) for q in range(101)]


def compare(real: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k in FIGURES:
        a, b = real[k], sim[k]
        out[k] = {
            "real": a,
            "sim": b,
            "diff_pct": round(100 * (a - b) / b, 1) if b else None,
        }
    return out


def plot(path: Path, passes: dict[str, dict[str, SimResult]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_u) = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = {"elastic": "C0", "static": "C3"}
    for policy, kinds in passes.items():
        for kind, res in kinds.items():
            ls = "-" if kind == "real" else "--"
            jcts = sorted(j.jct / 3600 for j in res.jobs)
            n = len(jcts)
            ax_c.step(
                jcts,
                [(i + 1) / n for i in range(n)],
                where="post",
                color=colors[policy],
                ls=ls,
                label=f"{policy} {kind} (avg {sum(jcts) / n:.1f} h)",
            )
            tl = res.timeline
            ax_u.step(
                [t / 3600 for t, _, _ in tl],
                [a for _, a, _ in tl],
                where="post",
                color=colors[policy],
                ls=ls,
                lw=0.8,
                label=f"{policy} {kind}",
            )
    ax_c.set_xscale("log")
    ax_c.set_xlabel("JCT (trace hours, log scale)")
    ax_c.set_ylabel("share of jobs")
    ax_c.set_title("JCT CDF: real stack (solid) vs simulator (dashed)")
    ax_c.legend(fontsize=7, loc="lower right")
    ax_c.grid(True, which="both", alpha=0.3)
    ax_u.set_xlabel("trace hours since the first arrival")
    ax_u.set_ylabel("GPUs allocated (of 64)")
    ax_u.set_title("GPUs allocated: real stack (solid) vs simulator (dashed)")
    ax_u.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--load", type=float, default=3.0, help="offered load of the arrivals")
    ap.add_argument("--mix", choices=("measured", "published"), default="measured")
    ap.add_argument("--hour-s", type=float, default=1.5, help="real seconds per trace hour")
    ap.add_argument("--cooldown", type=float, default=2.0, help="operator cooldown (real s)")
    ap.add_argument("--resync", type=float, default=1.0, help="operator resync (real s)")
    ap.add_argument("--tick", type=float, default=0.05, help="player's poll (real s)")
    ap.add_argument("--settle", type=float, default=0.15, help="player's discovery settle (s)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--policy", action="append", choices=("elastic", "static"))
    ap.add_argument("--no-delays", action="store_true", help="simulate without measured delays")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--reuse",
        type=Path,
        help="a result file: take its real passes and simulate again (no cluster)",
    )
    a = ap.parse_args(argv)
    # `timeout` and Ctrl-C alike: unwind, so that the cluster and the operator are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    s = Settings(
        a.jobs, a.seed, a.load, a.mix, a.hour_s, a.cooldown, a.resync, a.tick, a.settle, a.epochs
    )
    model = build_model()
    jobs = generate(NODES * GPUS_PER_NODE, s.jobs, s.seed, model.mix(s.mix), load=s.load)
    c = s.compression
    base = SimConfig(
        NODES * GPUS_PER_NODE,
        gpus_per_node=GPUS_PER_NODE,
        cooldown=s.cooldown_s * c,
        tick=s.resync_s * c,
    )
    doc: dict[str, Any] = {
        "benchmark": "elastic_replay-64",
        "machine": machine(),
        "settings": {
            **s.__dict__,
            "compression": round(c, 1),
            "nodes": NODES,
            "gpus_per_node": GPUS_PER_NODE,
            "sim_cooldown_s": base.cooldown,
            "sim_tick_s": base.tick,
            "tolerance_jct_avg": TOLERANCE,
        },
        "trace": summary(jobs, NODES * GPUS_PER_NODE),
        "policies": {},
    }
    policies = a.policy or ["elastic", "static"]
    reals: dict[str, SimResult] = {}
    extras: dict[str, dict[str, Any]] = {}
    if a.reuse:  # the real passes of an earlier run: only the simulator again
        old = json.loads(a.reuse.read_text())
        doc["machine"] = old["machine"]
        for policy in policies:
            reals[policy] = from_dicts(policy, old["policies"][policy]["real_run"])
            extras[policy] = old["policies"][policy]["replay"]
    else:
        for policy in policies:
            t_pass = time.monotonic()
            got = replay_pass(jobs, model.classes, s, policy)
            reals[policy] = got.pop("result")
            extras[policy] = {**got, "pass_wall_s": round(time.monotonic() - t_pass, 1)}
    sim_policy = {"elastic": "elastic", "static": "static-max"}
    plains = {p: simulate(jobs, model.classes, base, sim_policy[p]) for p in policies}
    measured = control_plane_delays(reals, plains, extras, s)
    cfg = base
    if not a.no_delays:
        cfg = replace(
            base, start_delay_s=measured["start_s"] * c, release_delay_s=measured["release_s"] * c
        )
    doc["control_plane_delays_real_s"] = measured
    doc["settings"]["sim_start_delay_s"] = cfg.start_delay_s
    doc["settings"]["sim_release_delay_s"] = cfg.release_delay_s
    passes: dict[str, dict[str, SimResult]] = {}
    rows = []
    ok = True
    for policy in policies:
        real, plain = reals[policy], plains[policy]
        sim = simulate(jobs, model.classes, cfg, sim_policy[policy])
        real_sum, sim_sum, plain_sum = real.summary(), sim.summary(), plain.summary()
        cmp = compare(real_sum, sim_sum)
        total, visible = visible_rescales(sim, cfg.start_delay_s)
        elastic_jobs = sum(1 for j in sim.jobs if j.max > j.min) or 1
        agree = abs(cmp["jct_avg_h"]["diff_pct"] or 0.0) <= 100 * TOLERANCE
        ok = ok and agree
        doc["policies"][policy] = {
            "real": {**real_sum, "jct_cdf_h": jct_cdf(real)},
            "sim": {**sim_sum, "jct_cdf_h": jct_cdf(sim)},
            "sim_without_delays": {**plain_sum, "jct_cdf_h": jct_cdf(plain)},
            "comparison": cmp,
            "comparison_without_delays": compare(real_sum, plain_sum),
            "sim_rescales_within_start_delay_merged": {
                "rescales": total,
                "visible": visible,
                "visible_per_elastic_job": round(visible / elastic_jobs, 3),
                "real_rescales": sum(j.rescales for j in real.jobs),
            },
            "jct_avg_within_tolerance": agree,
            "replay": extras[policy],
            "real_run": {
                "jobs": record_dicts(real),
                "timeline": real.timeline,
                "allocated_gpu_s": real.allocated_gpu_s,
                "busy_gpu_s": real.busy_gpu_s,
                "max_allocated": real.max_allocated,
            },
        }
        passes[policy] = {"real": real, "sim": sim}
        for kind, summ in (("real", real_sum), ("sim", sim_sum), ("sim-no-delays", plain_sum)):
            rows.append({"policy": policy, "kind": kind, **{k: summ[k] for k in FIGURES}})
        print(
            f"[replay] {policy}: JCT avg real {real_sum['jct_avg_h']} h, sim "
            f"{sim_sum['jct_avg_h']} h ({cmp['jct_avg_h']['diff_pct']:+} %), without delays "
            f"{plain_sum['jct_avg_h']} h; p95 {real_sum['jct_p95_h']} / {sim_sum['jct_p95_h']} h;"
            f" rescales/elastic job {real_sum['rescales_per_elastic_job']} / "
            f"{sim_sum['rescales_per_elastic_job']}; load avg {extras[policy]['load_avg_1m']}",
            flush=True,
        )
    print(f"[replay] control plane delays (real s): {measured}")
    doc["all_within_tolerance"] = ok
    a.out.mkdir(parents=True, exist_ok=True)
    stem = a.out / "elastic_replay-64"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(stem.with_suffix(".png"), passes)
    print(f"[replay] wrote {stem}.{{json,csv,png}}; within tolerance: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
