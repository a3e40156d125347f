"""Failover: two operator replicas share one Lease; the leader is SIGKILLed mid-pass, repeatedly.

    python -m benchmarks.operator_failover [--trials 10] [--runs 24] [--nodes 6]

Issue 19's acceptance: "failover time (leader SIGKILL -> standby's first pass) over 10 trials".
One fresh local cluster (`--nodes` kwok nodes of 8 GPUs), two replicas of
`python -m accordion_operator` on the production leader-election timings (no
ACCORDION_LEADER_* variable set: lease 10 s, renew deadline 7 s, retry 2 s; Lease
`default/accordion-operator`). Each trial:

1. `--runs` one-GPU runs are created in a namespace of their own; as soon as the leader's first
   pod of them exists (polled every 20 ms), it is mid-pass: the leader is SIGKILLed.
2. Measured from the kill, polling every 50 ms (each time is when the poll that saw it
   answered, so an upper bound by at most one poll): (a) `lease_s`, the Lease's
   `holderIdentity` names the standby; `leader_gauge_s`, the standby's
   `accordion_operator_leader` reads 1 (after the new term's LIST); (b) `first_pass_s`, the
   standby's `accordion_reconcile_duration_seconds_count{handler="trainingruns"}` increments
   (its first completed controller pass, as tests/cluster/test_operator_ha.py reads it);
   `converged_s`, every run of the trial admitted with exactly one launcher and one worker,
   no orphan, conditions everywhere (benchmarks.operator_chaos.observe): no duplicated pod.
3. The killed replica is started again (a new process, a new holder identity) as the standby;
   the trial's namespace is deleted; once the standby is healthy, has reported itself a
   standby and has had time for its first looks at the Lease, the next trial begins with the
   roles swapped.

Per-trial values and min/median/p95/max go to benchmarks/results/operator_failover.json.
The bound for (a) is `Timing.worst_takeover()` (lease + 2 x retry = 14 s); issue 19 asks 15 s.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.operator_proc import OperatorProcess
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body
from accordion_operator.config import Config
from accordion_operator.core.leader import Timing
from benchmarks._common import prepare_namespaces, write_result
from benchmarks.operator_chaos import converge

TR = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns"
#: the production defaults: lease `accordion-operator` in the namespace of a pod without a
#: service-account mount ("default")
LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/accordion-operator"
GAUGE = "accordion_operator_leader"
PASSES = 'accordion_reconcile_duration_seconds_count{handler="trainingruns"}'
TAKEOVER_LIMIT_S = 15.0  # issue 19
MEASURES = ("lease_s", "leader_gauge_s", "first_pass_s", "converged_s")


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


class Replica(OperatorProcess):
    """One replica, restartable; POD_NAME `name`, so that its Lease holder identity reads
    `<name>_<random>`. The production leader-election settings: any override inherited from the
    caller's environment is dropped."""

    def __init__(self, cluster: Cluster, name: str, log_dir: Path) -> None:
        super().__init__(
            cluster,
            log_dir,
            {
                "POD_NAME": name,
                # the runs name a fake endpoint (minio.local:9000), as in benchmarks._common
                "ACCORDION_STORAGE_PREFLIGHT": "false",
            },
            name=name,
            base_env={k: v for k, v in os.environ.items() if not k.startswith("ACCORDION_LEADER_")},
        )

    def metrics(self) -> tuple[float | None, float | None]:
        """(accordion_operator_leader, trainingruns passes), None where not readable."""
        text = self.metrics_text()
        return (None, None) if text is None else (metric(text, GAUGE), metric(text, PASSES))


def holder(http: httpx.Client) -> str:
    r = http.get(LEASE)
    return str((r.json().get("spec") or {}).get("holderIdentity") or "") if r.is_success else ""


def pods_in(http: httpx.Client, ns: str) -> int:
    return len(http.get(f"/api/v1/namespaces/{ns}/pods").json()["items"])


def settle(http: httpx.Client, leader: Replica, standby: Replica, timing: Timing) -> None:
    """Until `leader` leads (gauge 1, Lease names it) and `standby` is a healthy standby that
    has been up long enough to have looked at the Lease (one jittered retry period and more)."""
    poll(standby.healthy, 60, f"{standby.name} healthy", every=0.1)
    poll(
        lambda: leader.metrics()[0] == 1.0 and holder(http).startswith(f"{leader.name}_"),
        30,
        f"{leader.name} to lead",
        every=0.05,
    )
    poll(
        lambda: "standby until it holds lease" in standby.log.read_text(),
        10,
        f"{standby.name} standing by",
        every=0.05,
    )
    assert standby.metrics()[0] == 0.0, standby.tail()
    looked = standby.started_at + 1.5 * timing.retry + 1.0
    time.sleep(max(0.0, looked - time.monotonic()))


def trial(
    k: int,
    cluster: Cluster,
    http: httpx.Client,
    leader: Replica,
    standby: Replica,
    ns: str,
    runs: int,
    timeout: float,
) -> dict[str, Any]:
    """One failover: runs created, the leader killed at their first pod, the standby timed."""
    _, standby_passes = standby.metrics()
    _, leader_passes_before = leader.metrics()
    for i in range(runs):
        body = run_body(f"f{i:03d}", nodeSelector={"type": "kwok"})
        http.post(TR.format(ns=ns), json=body).raise_for_status()
    at_kill = poll(lambda: pods_in(http, ns), 30, "pod of the leader's pass", every=0.02)
    _, leader_passes = leader.metrics()
    killed = leader.kill()
    seen: dict[str, float] = {}
    deadline = killed + timeout
    while len(seen) < 3 and time.monotonic() < deadline:
        if "lease_s" not in seen and holder(http).startswith(f"{standby.name}_"):
            seen["lease_s"] = time.monotonic() - killed
        gauge, passes = standby.metrics()
        now = time.monotonic() - killed
        if gauge == 1.0:
            seen.setdefault("leader_gauge_s", now)
        if passes is not None and passes > (standby_passes or 0.0):
            seen.setdefault("first_pass_s", now)
        time.sleep(0.05)
    # the killed replica comes back as the standby while the new leader converges
    leader.start(wait=False)
    state = converge(cluster, runs, timeout, [ns], log=lambda _: None)
    if not state["problems"]:
        seen["converged_s"] = time.monotonic() - killed
    out: dict[str, Any] = {
        "trial": k,
        "killed": leader.name,
        "took_over": standby.name,
        "pods_at_kill": at_kill,
        "pods_of_the_pass": 2 * runs,
        "leader_passes_at_kill": leader_passes,
        "leader_passes_before_runs": leader_passes_before,
        **{m: round(seen[m], 2) if m in seen else None for m in MEASURES},
        "converged": not state["problems"],
        "problems": state["problems"][:10],
    }
    print(
        f"[failover] trial {k}: killed {leader.name} at {at_kill}/{2 * runs} pods; "
        + ", ".join(f"{m} {out[m]}" for m in MEASURES),
        flush=True,
    )
    return out


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = sorted(values)

    def pct(p: float) -> float:  # linear interpolation between closest ranks (numpy's default)
        x = (len(v) - 1) * p
        lo, hi = math.floor(x), math.ceil(x)
        return v[lo] + (v[hi] - v[lo]) * (x - lo)

    return {
        "min": round(v[0], 2),
        "median": round(pct(0.5), 2),
        "p95": round(pct(0.95), 2),
        "max": round(v[-1], 2),
    }


def table(trials: list[dict[str, Any]], stats: dict[str, Any]) -> str:
    head = f"{'trial':>7} {'pods@kill':>9} " + " ".join(f"{m:>14}" for m in MEASURES)
    rows = [head]
    for t in trials:
        cells = " ".join(f"{'-' if t[m] is None else t[m]:>14}" for m in MEASURES)
        rows.append(f"{t['trial']:>7} {t['pods_at_kill']:>9} {cells}")
    for s in ("min", "median", "p95", "max"):
        cells = " ".join(f"{stats[m][s] if stats[m] else '-':>14}" for m in MEASURES)
        rows.append(f"{s:>7} {'':>9} {cells}")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.operator_failover")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--runs", type=int, default=24, help="one-GPU runs created per trial")
    ap.add_argument("--nodes", type=int, default=6, help="kwok nodes of 8 GPUs")
    ap.add_argument("--timeout", type=float, default=60, help="per trial and phase")
    ap.add_argument("--name", default="operator_failover", help="results file name")
    args = ap.parse_args()
    if args.runs > args.nodes * 8 // 2:
        ap.error("--runs must fit twice in the GPUs (a trial's pods may outlive it briefly)")
    cfg = Config()
    timing = Timing(
        cfg.leader_lease_seconds, cfg.leader_renew_deadline_seconds, cfg.leader_retry_seconds
    )
    started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="accordion-failover-"))
    cluster = Cluster(
        ClusterConfig(
            state_dir=state,
            base_port=free_port_block(first=23400),
            kwok_nodes=args.nodes,
            monitoring=False,
        )
    )
    cluster.up(log=lambda line: print(line, flush=True))
    print(f"[failover] logs in {state}", flush=True)
    a = Replica(cluster, "replica-a", state)
    b = Replica(cluster, "replica-b", state)
    namespaces = [f"failover-{k}" for k in range(args.trials)]
    trials: list[dict[str, Any]] = []
    http = cluster.http()
    error = None
    try:
        prepare_namespaces(cluster, namespaces)
        a.start()
        poll(lambda: a.metrics()[0] == 1.0, 30, "replica-a to lead", every=0.05)
        b.start(wait=False)
        leader, standby = a, b
        for k, ns in enumerate(namespaces):
            settle(http, leader, standby, timing)
            trials.append(trial(k, cluster, http, leader, standby, ns, args.runs, args.timeout))
            # the pods go at once (grace 0), the runs with the namespace
            cluster.delete_namespace(ns)
            leader, standby = standby, leader
        settle(http, leader, standby, timing)
    except Exception as exc:  # keep the trials done so far: they are written below
        error = f"{type(exc).__name__}: {exc}"
        print(f"[failover] stopped: {error}", flush=True)
    finally:
        a.stop()
        b.stop()
        http.close()
        cluster.down()
    stats = {m: summary([t[m] for t in trials if t[m] is not None]) for m in MEASURES}
    print(table(trials, stats), flush=True)
    ok = (
        error is None
        and len(trials) == args.trials
        and all(t["converged"] for t in trials)
        and all(t["lease_s"] is not None and t["lease_s"] <= TAKEOVER_LIMIT_S for t in trials)
        and all(t["first_pass_s"] is not None for t in trials)
    )
    write_result(
        args.name,
        {
            "trials": args.trials,
            "runs_per_trial": args.runs,
            "gpus": args.nodes * 8,
            "timing": {
                "lease_seconds": timing.lease_duration,
                "renew_deadline_seconds": timing.renew_deadline,
                "retry_seconds": timing.retry,
                "worst_takeover_seconds": timing.worst_takeover(),
                "issue_limit_seconds": TAKEOVER_LIMIT_S,
            },
            "poll_seconds": 0.05,
            "measured_from": "SIGKILL sent to the leader",
            "ok": ok,
            "error": error,
            "summary": stats,
            "per_trial": trials,
            "wall_seconds": round(time.monotonic() - started, 1),
        },
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
