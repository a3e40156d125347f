"""Several GPUs per worker (issue 17), end to end: the real operator, real elastic training on
process nodes, real MinIO. Two process nodes of two simulated GPUs each; a run of two workers
with `gpusPerWorker: 2` trains with world size 2 x 2, each training process pinned to its own
one of its pod's GPUs (the ids the node agent handed the pod). Alongside it, a CPU run
(`gpusPerWorker: 0`) trains as before: one process per worker, no GPU."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from accordion_dev.cluster import Cluster, free_port_block
from accordion_dev.demo import NS, Demo, demo_config
from accordion_dev.polling import poll

RUN = "multigpu"
CPU_RUN = "cpuonly"
#: the line each training process logs at its start (accordion_trainer.gpus.pin_process)
PIN = re.compile(r"\[trainer\] rank (\d+) local_rank (\d+) pod (\S+) gpu (\S+)")
#: the worker's start line: the GPU ids the node gave its pod
WORKER_GPUS = re.compile(r"\[worker\] sshd on .*; GPUs (\S+)")


def worker_gpus(demo: Demo, run: str, count: int) -> dict[str, str] | None:
    """Pod name -> the GPU ids its worker logged, once `count` hosts have logged them (a
    launcher that hosts worker 0 logs its worker's lines too)."""
    out = {}
    for pod in demo.hosts(run):
        name = pod["metadata"]["name"]
        if (pod.get("status") or {}).get("phase") != "Running":
            return None
        found = WORKER_GPUS.search(demo.c.kubectl("logs", "-n", NS, name))
        if found is None:
            return None
        out[name] = found.group(1)
    return out if len(out) == count else None


def manifest(demo: Demo, name: str, workers: int, gpus: int) -> dict[str, Any]:
    doc = demo.manifest("mnist-trainingrun.yaml")
    doc["metadata"]["name"] = name
    doc["spec"]["epochs"] = 2
    doc["spec"]["workers"].update({"min": workers, "max": workers, "gpusPerWorker": gpus})
    return doc


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_worker_with_two_gpus_runs_two_pinned_processes(tmp_path: Path) -> None:
    t0 = time.monotonic()
    cfg = demo_config(tmp_path / "cluster", free_port_block(first=26200), monitoring=False)
    cfg.process_nodes, cfg.process_node_gpus = 2, 2
    demo = Demo(Cluster(cfg), ci=True)
    try:
        demo.cluster_up()
        demo.operator_up()
        demo.upload_data()
        demo.apply(manifest(demo, RUN, workers=2, gpus=2))
        demo.apply(manifest(demo, CPU_RUN, workers=1, gpus=0))
        # the workers' logs, while they exist (a finished run's workers are removed): both runs
        # watched at once, since the CPU run's one worker can finish before the others serve
        seen: dict[str, dict[str, str]] = {}

        def serving() -> bool:
            for run, count in ((RUN, 2), (CPU_RUN, 1)):
                if run not in seen and (found := worker_gpus(demo, run, count)):
                    seen[run] = found
            return len(seen) == 2

        poll(serving, 240, "two 2-GPU workers and the CPU worker serving")
        pod_gpus, cpu_gpus = seen[RUN], seen[CPU_RUN]

        for name in (RUN, CPU_RUN):
            run = poll(lambda name=name: demo.finished(name), 240, f"{name} to finish")
            assert run["status"]["phase"] == "Succeeded", run["status"]
            epochs = [h["epoch"] for h in run["status"]["training"]["history"]]
            assert epochs == [1, 2], epochs

        # one host per pod, one slot (a training process) per GPU: world size 2 x 2
        training = demo.get("trainingruns", RUN)["status"]["training"]
        assert training["worldSize"] == 4, training
        assert sorted(training["worldPods"]) == sorted(pod_gpus), training
        log = demo.c.kubectl("logs", "-n", NS, f"{RUN}-launcher")
        pins = {(pod, int(lr)): (int(rank), gpu) for rank, lr, pod, gpu in PIN.findall(log)}
        assert sorted(rank for rank, _ in pins.values()) == [0, 1, 2, 3], pins
        for pod, ids in pod_gpus.items():
            # each node's two simulated GPUs went to its one pod; each process got one of them
            assert sorted(ids.split(",")) == ["0", "1"], pod_gpus
            mine = {lr: gpu for (p, lr), (_, gpu) in pins.items() if p == pod}
            assert sorted(mine) == [0, 1], pins
            assert sorted(mine.values()) == sorted(ids.split(",")), (pod, ids, pins)

        # a worker without GPUs: one process, as before, that sees no GPU
        cpu = demo.get("trainingruns", CPU_RUN)["status"]["training"]
        assert cpu["worldSize"] == 1, cpu
        assert list(cpu_gpus.values()) == ["none"], cpu_gpus
        cpu_log = demo.c.kubectl("logs", "-n", NS, f"{CPU_RUN}-launcher")
        [cpu_pod] = cpu_gpus
        assert [m[1:] for m in PIN.findall(cpu_log)] == [("0", cpu_pod, "none")]
        print(f"wall time {time.monotonic() - t0:.0f} s")
    finally:
        demo.c.down()
