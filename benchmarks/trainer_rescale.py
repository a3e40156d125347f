"""How long a rescale takes, and where the seconds go.

Default: on process nodes, the whole path. A real run (mnist-cnn, 1..2 workers) trains through
the operator on the demo's local cluster and is scaled 1 -> 2 -> 1 (`kubectl scale`)
`--changes` times. Each grow is broken into phases from the operator's decision to the first
step with the new worker (GROW_MARKS), each shrink from the decision to the first step without
it (SHRINK_MARKS); p50/p95 per phase into `results/trainer_rescale_phases.json` and a stacked
bar plot `trainer_rescale_phases.png` (with `trainer_rescale_phases_before.json`'s bars, when
that baseline exists).

    flock /tmp/accordion-cluster.lock .venv/bin/python -m benchmarks.trainer_rescale [--changes 10]

`--standalone`: the trainer alone (no cluster). One standalone run (2 workers, MNIST subset) is
grown and shrunk by rewriting its hosts file; for each change: change -> interrupt (discovery +
notification), change -> first step at the new size, and for grows how long the joining
process took to start Python, import TensorFlow and be ready (from its ACCORDION_BOOT line).

    .venv/bin/python -m benchmarks.trainer_rescale --standalone [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from accordion_dev.polling import poll
from benchmarks._trainer import RESULTS, env, events, sample_data, save, stop_run, trainer


def wait(pred: Any, timeout: float, proc: subprocess.Popen[bytes]) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        if proc.poll() is not None:
            raise RuntimeError("training exited early")
        time.sleep(0.1)
    raise TimeoutError


def write_hosts(work: Path, hosts: list[str]) -> float:
    tmp = work / "hosts.tmp"
    tmp.write_text("".join(f"{h}:1\n" for h in hosts))
    os.replace(tmp, work / "hosts")
    return time.time()


def standalone(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pretrace", default="1")
    ap.add_argument("--poll", default="0.25", help="ACCORDION_DISCOVERY_POLL_S")
    ap.add_argument("--name", default="trainer_rescale")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rescale-"))
    data = sample_data(tmp / "data")
    work, log = tmp / "work", tmp / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            trainer(
                "run",
                "-np",
                "2",
                "--data",
                str(data),
                "--results",
                str(tmp / "res"),
                "--work",
                str(work),
                "--epochs",
                "200",
                "--batch-size",
                "32",
                "--checkpoint-epochs",
                "0",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env(
                ACCORDION_PRETRACE=a.pretrace,
                ACCORDION_DISCOVERY_POLL_S=a.poll,
                ACCORDION_TF_THREADS="1",
            ),
        )
    changes: list[dict[str, Any]] = []
    try:
        wait(
            lambda: [e for e in events(log) if e["event"] == "first_step" and e["epoch"] >= 1],
            300,
            proc,
        )
        hosts = ["127.0.0.2", "127.0.0.3"]
        nxt = 4
        plan: list[str] = []
        for _ in range(a.repeats):
            plan += ["grow", "shrink", "swap"]
        for op in plan:
            if op == "grow":
                hosts = [*hosts, f"127.0.0.{nxt}"]
                nxt += 1
            elif op == "shrink":
                hosts = hosts[:-1]
            else:  # replace the oldest host (usually rank 0) by a new one
                hosts = [*hosts[1:], f"127.0.0.{nxt}"]
                nxt += 1
            time.sleep(3)  # let the previous change settle into steady steps
            t0 = write_hosts(work, hosts)
            n = len(hosts)

            def first_step_at(n: int = n, t0: float = t0) -> Any:
                # The first step after a re-start at the new size (a swap keeps the size, so
                # a step at size n alone could still be the old world's).
                evs = events(log)
                start = next(
                    (
                        e
                        for e in evs
                        if e["event"] == "start" and e["world_size"] == n and e["time"] > t0
                    ),
                    None,
                )
                if start is None:
                    return None
                return next(
                    (e for e in evs if e["event"] == "first_step" and e["time"] >= start["time"]),
                    None,
                )

            step = wait(first_step_at, 120, proc)
            intr = next(
                (e for e in events(log) if e["event"] == "interrupt" and e["time"] > t0), None
            )
            boots = [b for b in events(log, "BOOT") if b["start"] and b["start"] > t0]
            rec: dict[str, Any] = {
                "op": op,
                "world_size": len(hosts),
                "change_to_first_step_s": round(step["time"] - t0, 3),
                "change_to_interrupt_s": round(intr["time"] - t0, 3) if intr else None,
            }
            if boots:
                b = boots[0]
                rec["joiner_python_start_s"] = round(b["start"] - t0, 3)
                rec["joiner_tf_import_s"] = round(b["imported"] - b["start"], 3)
                rec["joiner_ready_s"] = round(b["ready"] - t0, 3)
            changes.append(rec)
            print(rec, flush=True)
    finally:
        stop_run(proc, work / "scratch")
    worst = max(c["change_to_first_step_s"] for c in changes)
    save(
        a.name,
        {
            "setup": {
                "np_start": 2,
                "batch_size": 32,
                "model": "mnist-cnn",
                "pretrace": a.pretrace,
                "discovery_poll_s": float(a.poll),
                "commit_every": "auto (~0.2 s of steps)",
            },
            "changes": changes,
            "max_change_to_first_step_s": worst,
            "target_s": 10.0,
            "met": worst <= 10.0,
        },
    )


# --- on process nodes: the whole path, phase by phase --------------------------------------------

RUN = "rescale"
#: Marks of a grow, in the order they happen, with what records each one: the benchmark's
#: watches of the apiserver (the time it saw the change), the worker's and the launcher's
#: ACCORDION_EVENT lines, and the joining process's ACCORDION_BOOT line. Each phase is the time
#: from the previous mark to this one.
GROW_MARKS = (
    ("granted", "operator decides the grow (status.desiredWorkers)"),
    ("pod_created", "worker pod created"),
    ("pod_running", "pod Running (process started)"),
    ("sshd", "worker staged the data (and prepared its warm process), sshd started"),
    ("pod_ready", "pod Ready (readiness probe)"),
    ("discovered", "launcher's discovery sees it"),
    ("interrupt", "workers interrupted at a commit (Horovod notified)"),
    ("proc_start", "training process started on the new pod (ssh; a warm one: handed off)"),
    ("imported", "TensorFlow + Horovod imported (a warm process: before, not on the way)"),
    ("rendezvous", "Gloo rendezvous done (hvd.init)"),
    ("synced", "state broadcast done, world gathered"),
    ("first_step", "first step at the new size"),
)
SHRINK_MARKS = (
    ("decided", "operator decides the shrink (status.desiredWorkers)"),
    ("pod_deleting", "worker pod deleted (deletionTimestamp)"),
    ("discovered", "launcher's discovery drops it"),
    ("interrupt", "workers interrupted at a commit (Horovod notified)"),
    ("synced", "reset done, state synced"),
    ("first_step", "first step at the new size"),
)


class Watch(threading.Thread):
    """Every event of an apiserver watch, with the time this process received it."""

    def __init__(self, cluster: Any, path: str, params: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.path, self.params = cluster, path, params
        self.seen: list[tuple[float, str, dict[str, Any]]] = []

    def run(self) -> None:
        while True:  # until the cluster goes (a daemon thread)
            try:
                with (
                    self.cluster.http(timeout=None) as http,
                    http.stream("GET", self.path, params={**self.params, "watch": "1"}) as r,
                ):
                    for line in r.iter_lines():
                        if line:
                            ev = json.loads(line)
                            self.seen.append((time.time(), ev["type"], ev["object"]))
            except Exception:  # the apiserver ended the watch: watch again
                time.sleep(0.5)

    def first(self, after: float, pred: Any) -> float | None:
        return next((t for t, kind, obj in list(self.seen) if t > after and pred(kind, obj)), None)


def _ready(obj: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in obj.get("status", {}).get("conditions") or []
    )


def _pct(values: list[float], q: float) -> float:
    """The q-quantile, nearest rank (p95 of 10 values is the largest)."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def _summary(records: list[dict[str, Any]], marks: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _ in marks[1:]:
        vals = [r["phases_s"][key] for r in records if r["phases_s"].get(key) is not None]
        if vals:
            out[key] = {"p50": round(_pct(vals, 0.5), 3), "p95": round(_pct(vals, 0.95), 3)}
    totals = [r["total_s"] for r in records]
    out["total"] = {"p50": round(_pct(totals, 0.5), 3), "p95": round(_pct(totals, 0.95), 3)}
    # The running workers' pause: no step from their interrupt (or, when a departing worker
    # failed instead, from the discovery) to the first step at the new size.
    pauses = [
        r["at_s"]["first_step"] - (r["at_s"]["interrupt"] or r["at_s"]["discovered"] or 0.0)
        for r in records
    ]
    out["paused"] = {"p50": round(_pct(pauses, 0.5), 3), "p95": round(_pct(pauses, 0.95), 3)}
    return out


def resummarize(name: str) -> None:
    """`--replot`: the summaries of `<name>.json`, its `_before` and `_rerun` recomputed from
    their records (after a change to what is summarised), and the plot drawn again."""
    for path in (RESULTS / f"{n}.json" for n in (f"{name}_before", name, f"{name}_rerun")):
        if path.exists():
            doc = json.loads(path.read_text())
            for op, marks in (("grow", GROW_MARKS), ("shrink", SHRINK_MARKS)):
                doc[op]["summary"] = _summary(doc[op]["changes"], marks)
            path.write_text(json.dumps(doc, indent=1) + "\n")
    plot(name)


def _phases(at: dict[str, float | None], marks: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Each phase: from the latest earlier mark that was recorded to this mark (a phase may be
    negative when two things overlap, e.g. a process that starts before the interrupt)."""
    out: dict[str, float | None] = {}
    prev = at[marks[0][0]]
    for key, _ in marks[1:]:
        t = at.get(key)
        out[key] = None if t is None or prev is None else round(t - prev, 3)
        if t is not None:
            prev = t
    return out


def on_process_nodes(argv: list[str]) -> None:
    """Grow and shrink a real run through the operator on process nodes, `--changes` times
    each, and break every change down into phases."""
    from accordion_dev.cluster import Cluster, free_port_block
    from accordion_dev.demo import NS, Demo, demo_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=10, help="grows (and as many shrinks)")
    ap.add_argument("--name", default="trainer_rescale_phases")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of steps between changes")
    ap.add_argument("--replot", action="store_true", help="only recompute summaries and plot")
    ap.add_argument(
        "--pinned",
        action="store_true",
        help="two process nodes, each pinned to a host CPU of its own (as nodes have): the new "
        "pod's start does not share a core with the running worker's training",
    )
    a = ap.parse_args(argv)
    if a.replot:
        resummarize(a.name)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-rescale-"))
    load_at_start = os.getloadavg()
    cfg = demo_config(tmp / "cluster", free_port_block(first=27400))
    where = (
        "process nodes (accordion_dev.demo cluster: 3 nodes x 1 simulated GPU, sharing all cores)"
    )
    if a.pinned:
        cfg.process_nodes, cfg.process_node_cpus = 2, ("0", "1")
        where = "process nodes (2 nodes x 1 simulated GPU, node i pinned to host CPU i)"
    demo = Demo(Cluster(cfg), ci=True)
    grows: list[dict[str, Any]] = []
    shrinks: list[dict[str, Any]] = []
    loads: list[float] = []
    try:
        demo.cluster_up()
        demo.operator_up()
        demo.upload_data()
        doc = demo.manifest("mnist-trainingrun.yaml")
        doc["metadata"]["name"] = RUN
        doc["spec"]["epochs"] = 10000
        doc["spec"]["checkpointEpochs"] = 10000
        doc["spec"]["workers"].update({"min": 1, "max": 2, "replicas": 1})
        demo.apply(doc)
        sel = {"labelSelector": f"accordion.dev/run={RUN},accordion.dev/role=worker"}
        pods = Watch(demo.c, f"/api/v1/namespaces/{NS}/pods", sel)
        runs = Watch(
            demo.c,
            f"/apis/accordion.dev/v1alpha1/namespaces/{NS}/trainingruns",
            {"fieldSelector": f"metadata.name={RUN}"},
        )
        pods.start()
        runs.start()

        def launcher_log() -> Path:
            out = tmp / "launcher.log"
            out.write_text(
                demo.c.kubectl("logs", "-n", NS, f"{RUN}-launcher", check=False)
                if demo.pods(RUN, "launcher")
                else ""
            )
            return out

        def first_step(n: int, after: float) -> dict[str, Any] | None:
            evs = events(launcher_log())
            start = next(
                (
                    e
                    for e in evs
                    if e["event"] == "start" and e["world_size"] == n and e["time"] > after
                ),
                None,
            )
            if start is None:
                return None
            return next(
                (e for e in evs if e["event"] == "first_step" and e["time"] >= start["time"]), None
            )

        poll(lambda: first_step(1, 0.0), 300, "the run's first step")
        for i in range(a.changes):
            for n in (2, 1):
                time.sleep(a.settle)
                loads.append(os.getloadavg()[0])
                t0 = time.time()
                demo.c.kubectl("scale", "-n", NS, "trainingrun", RUN, "--replicas", str(n))
                # (the marks' times come from the logs: polling slowly keeps kubectl off the
                # 2 cores without making them later)
                step = poll(lambda n=n, t0=t0: first_step(n, t0), 120, f"world size {n}", every=1.0)
                log = launcher_log()
                rec = (grow if n == 2 else shrink)(demo, pods, runs, log, t0, step, n)
                rec["change"] = i
                (grows if n == 2 else shrinks).append(rec)
                print(json.dumps(rec), flush=True)
    finally:
        demo.c.down()
    doc_out = {
        "setup": {
            "where": where,
            "run": "mnist-cnn, batch 64, workers min 1 max 2, kubectl scale 1 <-> 2",
            "changes": a.changes,
            "settle_s": a.settle,
            "time_base": "grow: the operator's decision (granted); shrink: its decision",
        },
        "loadavg_1m_at_start": round(load_at_start[0], 2),
        "loadavg_1m_at_changes": {
            "min": round(min(loads), 2),
            "median": round(statistics.median(loads), 2),
            "max": round(max(loads), 2),
        },
        "grow_marks": dict(GROW_MARKS),
        "shrink_marks": dict(SHRINK_MARKS),
        "grow": {"summary": _summary(grows, GROW_MARKS), "changes": grows},
        "shrink": {"summary": _summary(shrinks, SHRINK_MARKS), "changes": shrinks},
        "targets_s": {"grow_p95": 5.0, "shrink_p95": 2.0},
    }
    doc_out["met"] = {
        "grow": doc_out["grow"]["summary"]["total"]["p95"] <= 5.0,
        "shrink": doc_out["shrink"]["summary"]["total"]["p95"] <= 2.0,
    }
    save(a.name, doc_out)
    plot(a.name)


def grow(
    demo: Any, pods: Watch, runs: Watch, log: Path, t0: float, step: dict[str, Any], n: int
) -> dict[str, Any]:
    def desired(kind: str, obj: dict[str, Any]) -> bool:
        return bool(obj.get("status", {}).get("desiredWorkers") == n)

    known = {o["metadata"]["uid"] for t, _, o in list(pods.seen) if t <= t0}
    new = next(
        (o for t, kind, o in list(pods.seen) if t > t0 and o["metadata"]["uid"] not in known),
        None,
    )
    assert new is not None, "no worker pod was added"
    name, uid = new["metadata"]["name"], new["metadata"]["uid"]

    def this(pred: Any) -> Any:
        return lambda kind, obj: obj["metadata"]["uid"] == uid and pred(kind, obj)

    at: dict[str, float | None] = {
        "pod_created": pods.first(t0, this(lambda k, o: k == "ADDED")),
        "pod_running": pods.first(t0, this(lambda k, o: o["status"].get("phase") == "Running")),
        "pod_ready": pods.first(t0, this(lambda k, o: _ready(o))),
    }
    granted = runs.first(t0, desired)
    # the operator writes the status after it creates the pods: the earlier of the two
    at["granted"] = min(x for x in (granted, at["pod_created"]) if x is not None)
    ip = next(
        o["status"]["podIP"]
        for _, _, o in pods.seen
        if o["metadata"]["uid"] == uid and o["status"].get("podIP")
    )
    wlog = demo.c.kubectl("logs", "-n", "demo", name, check=False)
    sshd = [
        json.loads(line.split("ACCORDION_EVENT ", 1)[1])
        for line in wlog.splitlines()
        if "ACCORDION_EVENT " in line and '"sshd"' in line
    ]
    at["sshd"] = sshd[0]["time"] if sshd else None
    evs = events(log)
    at["discovered"] = next(
        (e["time"] for e in evs if e["event"] == "hosts" and e["time"] > t0 and ip in e["hosts"]),
        None,
    )
    at["interrupt"] = next(
        (e["time"] for e in evs if e["event"] == "interrupt" and e["time"] > t0), None
    )
    boot = next((b for b in events(log, "BOOT") if b["host"] == ip and b["ready"] > t0), None)
    warm = bool(boot and boot.get("handoff"))
    if boot is not None:
        # a warm process (trainer warm.py) imported everything before the pod was Ready: its
        # start is the hand-off, and the import is not on the way
        at["proc_start"] = boot["handoff"] if warm else boot["start"]
        at["imported"] = None if warm else boot["imported"]
        at["rendezvous"] = boot["hvd_init"]
    start = next(
        e for e in evs if e["event"] == "start" and e["world_size"] == n and e["time"] > t0
    )
    at["synced"] = start["time"]
    at["first_step"] = step["time"]
    return {
        "op": "grow",
        "pod": name,
        "warm_handoff": warm,
        "scale_to_granted_s": round(at["granted"] - t0, 3),
        "at_s": {k: (None if v is None else round(v - at["granted"], 3)) for k, v in at.items()},
        "phases_s": _phases(at, GROW_MARKS),
        "total_s": round(step["time"] - at["granted"], 3),
    }


def shrink(
    demo: Any, pods: Watch, runs: Watch, log: Path, t0: float, step: dict[str, Any], n: int
) -> dict[str, Any]:
    decided = runs.first(t0, lambda k, o: o.get("status", {}).get("desiredWorkers") == n)
    deleting = pods.first(t0, lambda k, o: bool(o["metadata"].get("deletionTimestamp")))
    at: dict[str, float | None] = {"pod_deleting": deleting}
    at["decided"] = min(x for x in (decided, deleting) if x is not None)
    evs = events(log)
    at["discovered"] = next(
        (
            e["time"]
            for e in evs
            if e["event"] == "hosts" and e["time"] > t0 and len(e["hosts"]) == n
        ),
        None,
    )
    at["interrupt"] = next(
        (e["time"] for e in evs if e["event"] == "interrupt" and e["time"] > t0), None
    )
    start = next(
        e for e in evs if e["event"] == "start" and e["world_size"] == n and e["time"] > t0
    )
    at["synced"] = start["time"]
    at["first_step"] = step["time"]
    return {
        "op": "shrink",
        "scale_to_decided_s": round(at["decided"] - t0, 3),
        "at_s": {k: (None if v is None else round(v - at["decided"], 3)) for k, v in at.items()},
        "phases_s": _phases(at, SHRINK_MARKS),
        "total_s": round(step["time"] - at["decided"], 3),
    }


def plot(name: str) -> None:
    """Stacked bars of the p50 and p95 phases of a grow and a shrink, with those of the baseline
    `<name>_before.json` and of a second run `<name>_rerun.json` where they exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [
        (label, RESULTS / f"{n}.json")
        for label, n in (("before", f"{name}_before"), ("after", name), ("rerun", f"{name}_rerun"))
    ]
    rows: list[tuple[str, dict[str, Any], tuple[tuple[str, str], ...]]] = []
    for label, path in docs:
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        for op, marks in (("grow", GROW_MARKS), ("shrink", SHRINK_MARKS)):
            for q in ("p50", "p95"):
                rows.append(
                    (f"{op} {q} ({label})", {k: v[q] for k, v in doc[op]["summary"].items()}, marks)
                )
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(rows) + 2.5))
    cmap = plt.get_cmap("tab20")
    keys = list(dict.fromkeys(k for _, _, marks in rows for k, _ in marks[1:]))
    labelled: set[str] = set()
    widest = 0.0
    for y, (_, summ, marks) in enumerate(rows):
        left = 0.0
        for key, _ in marks[1:]:
            w = max(0.0, float(summ.get(key, 0.0)))
            first = key not in labelled
            labelled.add(key)
            color = cmap(keys.index(key))
            ax.barh(y, w, left=left, color=color, edgecolor="white", label=key if first else None)
            left += w
        widest = max(widest, left)
        ax.text(
            left + 0.05,
            y,
            f"total {summ['total']:.1f} s, training paused {summ['paused']:.1f} s",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, widest * 1.5)  # room for the totals
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(
        "seconds from the operator's decision (each phase at its own p50/p95; "
        "the total is the p50/p95 of the whole)"
    )
    ax.set_title("Rescale on process nodes, phase by phase")
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    argv = sys.argv[1:]
    if "--standalone" in argv:
        argv.remove("--standalone")
        standalone(argv)
    else:
        on_process_nodes(argv)


if __name__ == "__main__":
    main()
