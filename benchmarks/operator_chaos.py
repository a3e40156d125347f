"""Chaos: one-worker runs on kwok GPU nodes while the operator is SIGKILLed at random moments.

    python -m benchmarks.operator_chaos [--runs 100] [--nodes 8] [--kills 10] [--seed 1]

Creates `--runs` one-GPU runs in 4 namespaces on `--nodes` kwok nodes of 8 GPUs (fewer GPUs than
runs, so some must queue), then kills the operator with SIGKILL `--kills` times at random
moments 0.5-4 s apart while it admits runs and creates their pods, restarting it at once each
time; half-way, a sixth of the runs are deleted so that queued ones must take their place.
Then it waits until the cluster is in the state the allocator implies and checks it (issue 16's
chaos acceptance): exactly
min(runs, GPUs) runs admitted with one worker each, the rest Queued with none; no run with two
launchers or more workers than it was granted; no pod that carries a run's labels without being
controlled by a live run (orphans); every run with conditions. It reports the time from the last
restart to that state (`converged_seconds`) to benchmarks/results/operator_chaos.json.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block
from accordion_dev.labels import WORKER_INDEX
from accordion_dev.simulated_runs import run_body
from benchmarks._common import prepare_namespaces, start_operator, write_result

TR = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns"
TR_ALL = "/apis/accordion.dev/v1alpha1/{where}trainingruns"
NAMESPACES = [f"chaos-{i}" for i in range(4)]


def observe(cluster: Cluster, gpus: int, namespaces: Sequence[str] = ()) -> dict[str, Any]:
    """The state of every run and Accordion pod (of `namespaces`, or of the whole cluster), and
    what is wrong with it (`problems` empty: converged). `gpus`: those the runs may use."""
    runs: list[dict[str, Any]] = []
    pods: list[dict[str, Any]] = []
    selector = {"labelSelector": "app.kubernetes.io/managed-by"}
    with cluster.http() as http:
        for ns in namespaces or [""]:
            where = f"namespaces/{ns}/" if ns else ""
            runs += http.get(TR_ALL.format(where=where)).json()["items"]
            pods += http.get(f"/api/v1/{where}pods", params=selector).json()["items"]
    uids = {r["metadata"]["uid"]: r for r in runs}
    owned: Counter[tuple[str, str]] = Counter()
    orphans = []
    for p in pods:
        meta = p["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        owner = next((o["uid"] for o in meta.get("ownerReferences", []) if o.get("controller")), "")
        if owner not in uids:
            orphans.append(meta["name"])
            continue
        labels = meta["labels"]
        owned[(owner, labels.get("accordion.dev/role", ""))] += 1
        # a Horovod host: a worker pod, or a launcher that hosts worker 0 (a worker index)
        owned[(owner, "host")] += WORKER_INDEX in labels
    problems: list[str] = []
    admitted = 0
    for r in runs:
        uid, name, st = r["metadata"]["uid"], r["metadata"]["name"], r.get("status") or {}
        if not st.get("conditions"):
            problems.append(f"{name}: no conditions")
        adm: dict[str, Any] = next(
            (c for c in st.get("conditions", []) if c["type"] == "Admitted"), {}
        )
        granted = 1 if adm.get("status") == "True" else 0
        admitted += granted
        if owned[(uid, "host")] != granted:
            problems.append(f"{name}: {owned[(uid, 'host')]} workers, granted {granted}")
        if owned[(uid, "launcher")] != granted:
            problems.append(f"{name}: {owned[(uid, 'launcher')]} launchers, granted {granted}")
    if admitted != min(len(runs), gpus):
        problems.append(f"{admitted} runs admitted, the allocator implies {min(len(runs), gpus)}")
    if orphans:
        problems.append(f"orphaned pods: {orphans[:5]}")
    return {"runs": len(runs), "admitted": admitted, "problems": problems}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.operator_chaos")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    gpus = args.nodes * 8
    state = Path(tempfile.mkdtemp(prefix="accordion-chaos-"))
    cluster = Cluster(
        ClusterConfig(
            state_dir=state,
            base_port=free_port_block(first=23400),
            kwok_nodes=args.nodes,
            monitoring=False,
        )
    )
    cluster.up(log=lambda line: print(line, flush=True))
    log = state / "operator.log"
    op: subprocess.Popen[bytes] | None = None
    try:
        prepare_namespaces(cluster, NAMESPACES)
        op = start_operator(cluster, log)
        kills: list[float] = []
        t0 = time.monotonic()

        def restart() -> None:
            nonlocal op
            assert op is not None
            op = kill_and_restart(op, cluster, log, kills, t0)

        storm(cluster, NAMESPACES, runs=args.runs, kills=args.kills, rng=rng, restart=restart)
        restarted = time.monotonic()
        seen = converge(cluster, gpus, args.timeout)
        converged = round(time.monotonic() - restarted, 1)
        ok = not seen["problems"]
        write_result(
            "operator_chaos",
            {
                "runs": args.runs,
                "gpus": gpus,
                "kills": [round(k, 1) for k in kills],
                "converged": ok,
                "converged_seconds": converged if ok else None,
                "admitted": seen.get("admitted"),
                "problems_left": seen.get("problems", [])[:20],
                "seed": args.seed,
            },
        )
        return 0 if ok else 1
    finally:
        if op is not None:
            op.terminate()
            op.wait(timeout=20)
        cluster.down()


def storm(
    cluster: Cluster,
    namespaces: Sequence[str],
    *,
    runs: int,
    kills: int,
    rng: random.Random,
    restart: Callable[[], None],
    node_selector: Mapping[str, str] | None = None,
    gap: tuple[float, float] = (0.5, 4.0),
) -> None:
    """Create `runs` one-GPU runs `c000`... round-robin in `namespaces`, then call `restart`
    (SIGKILL the operator and start it again) `kills` times, `gap` seconds apart at random,
    while the operator admits runs, creates their pods and writes status; after half the kills,
    delete the first sixth of the runs, so that queued ones must take their place."""
    with cluster.http() as http:
        for i in range(runs):
            ns = namespaces[i % len(namespaces)]
            body = run_body(f"c{i:03d}", nodeSelector=dict(node_selector or {"type": "kwok"}))
            http.post(TR.format(ns=ns), json=body).raise_for_status()
        for k in range(kills):
            time.sleep(rng.uniform(*gap))
            restart()
            if k == kills // 2:
                for i in range(runs // 6):
                    ns = namespaces[i % len(namespaces)]
                    http.delete(TR.format(ns=ns) + f"/c{i:03d}").raise_for_status()


def converge(
    cluster: Cluster,
    gpus: int,
    timeout: float,
    namespaces: Sequence[str] = (),
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict[str, Any]:
    """`observe` every second until nothing is wrong or `timeout` seconds passed; the last
    observation."""
    start = time.monotonic()
    seen: dict[str, Any] = {}
    while time.monotonic() - start < timeout:
        seen = observe(cluster, gpus, namespaces)
        log(f"[chaos] t={time.monotonic() - start:5.1f} s {seen}")
        if not seen["problems"]:
            break
        time.sleep(1.0)
    return seen


def kill_and_restart(
    op: subprocess.Popen[bytes], cluster: Cluster, log: Path, kills: list[float], t0: float
) -> subprocess.Popen[bytes]:
    """SIGKILL (no cleanup, no graceful shutdown) and start a new operator at once."""
    op.send_signal(signal.SIGKILL)
    op.wait()
    kills.append(time.monotonic() - t0)
    print(f"[chaos] killed the operator at t={kills[-1]:.1f} s ({len(kills)})", flush=True)
    return start_operator(cluster, log)


if __name__ == "__main__":
    raise SystemExit(main())
