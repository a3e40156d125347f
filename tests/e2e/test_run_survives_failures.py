"""A run that survives two failures in turn, end to end: the real operator, real elastic training
on process nodes, real MinIO. One run serves both scenarios (each would otherwise pay for its own
cluster, data and first epochs).

1. A training process killed inside a worker pod that stays Ready (issue 16). Horovod drops the
   dead process's host for good and trains on with the other worker; the trainer reports the
   smaller world (`status.training.worldPods`); the operator deletes the pod that left it
   (`WorkerLeftWorld`), creates a replacement (a new pod IP, which Horovod admits), and training
   goes on without a launcher restart.
2. Then the launcher dies mid-training (issue 4: "launcher failure restarts it (backoffLimit,
   exponential backoff) and training resumes from the last checkpoint"): its process is killed
   with SIGKILL (a crash, not a deletion), its pod fails, the operator waits out the back-off and
   replaces it, and the new launcher resumes from the newest checkpoint in the results bucket
   instead of starting again at epoch 0.

The run then succeeds with one history entry per epoch, the replacement worker in its world."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from accordion_dev.cluster import Cluster, free_port_block
from accordion_dev.demo import NS, Demo, demo_config
from accordion_dev.polling import poll

RUN = "survivor"
#: the operator's grace period here: short, and still longer than Horovod takes to notice a
#: worker that turned Ready (~1 s)
GRACE_S = 5
#: the operator's first launcher back-off (10 s by default): the wait is the same code at any length
BACKOFF_S = 2
#: enough epochs (about a second each at one worker) to outlast, under a loaded CI machine, the
#: replacement's start (its warm processes import TensorFlow: 10-60 s) and the launcher's restart;
#: with fewer, the run could succeed before the test saw either
EPOCHS = 40


def training_process(pod: dict[str, Any]) -> psutil.Process:
    """The training process in a worker pod: started by horovodrun over ssh, so a descendant of
    the pod's container (process nodes report `process://<node>/<pid>`) through its sshd."""
    [cs] = pod["status"]["containerStatuses"]
    container = psutil.Process(int(cs["containerID"].rsplit("/", 1)[1]))
    for proc in container.children(recursive=True):
        try:
            if proc.cmdline()[-3:] == ["-m", "accordion_trainer", "train"]:
                return proc
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no training process under {pod['metadata']['name']}")


def launcher_pid(demo: Demo) -> tuple[str, int] | None:
    """(pod uid, pid) of the running launcher: process nodes report `process://<node>/<pid>`."""
    for pod in demo.pods(RUN, "launcher"):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if "running" in (cs.get("state") or {}) and cs.get("containerID"):
                return pod["metadata"]["uid"], int(cs["containerID"].rsplit("/", 1)[1])
    return None


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_dead_worker_process_then_a_dead_launcher_and_every_epoch_trained_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.monotonic()
    monkeypatch.setenv("ACCORDION_WORLD_GRACE_SECONDS", str(GRACE_S))  # the operator's settings
    monkeypatch.setenv("ACCORDION_LAUNCHER_BACKOFF_SECONDS", str(BACKOFF_S))
    demo = Demo(
        Cluster(demo_config(tmp_path / "cluster", free_port_block(first=25600), monitoring=False)),
        ci=True,
    )
    try:
        demo.cluster_up()
        demo.operator_up()
        demo.upload_data()
        doc = demo.manifest("mnist-trainingrun.yaml")
        doc["metadata"]["name"] = RUN
        doc["spec"]["epochs"] = EPOCHS
        doc["spec"]["checkpointEpochs"] = 1
        doc["spec"]["workers"].update({"min": 1, "max": 2})
        demo.apply(doc)
        t_applied = time.monotonic()

        # --- 1. a worker's training process dies -----------------------------------------
        def both_in_the_world() -> dict[str, Any] | None:
            tr = demo.get("trainingruns", RUN).get("status", {}).get("training") or {}
            return tr if len(tr.get("worldPods") or []) == 2 and tr.get("epoch", 0) >= 1 else None

        before = poll(both_in_the_world, 240, "two workers training")
        # not rank 0: its pod stays, so the test sees the world shrink rather than move
        # (a launcher that hosts worker 0 holds rank 0: accordion_trainer.incluster.led_by)
        [victim] = [p for p in demo.hosts(RUN) if p["metadata"]["name"] != before["rank0Pod"]]
        assert victim["metadata"]["labels"]["accordion.dev/role"] == "worker", victim["metadata"]
        name, uid = victim["metadata"]["name"], victim["metadata"]["uid"]
        old_uids = {p["metadata"]["uid"] for p in demo.hosts(RUN)}
        assert name in before["worldPods"]
        training_process(victim).send_signal(signal.SIGKILL)
        t_killed = time.monotonic()

        def replaced() -> list[dict[str, Any]] | None:
            now = demo.hosts(RUN)
            gone = all(p["metadata"]["uid"] != uid for p in now)
            up = [p for p in now if ready(p)]
            return up if gone and len(up) == 2 else None

        # A worker turns Ready once its warm training processes have imported TensorFlow and built
        # the model (accordion_trainer.warm, at most 120 s): under load that is most of the wait.
        after = poll(replaced, 240, "the worker that left the world to be replaced")
        t_replaced = time.monotonic()
        [new] = [p for p in after if p["metadata"]["uid"] not in old_uids]
        # Its name is the first free index (the victim's own once that pod is gone); its pod IP
        # is new (process nodes hand addresses out in order), so Horovod's blacklist of the
        # victim's address does not keep it out.
        assert new["status"]["podIP"] != victim["status"]["podIP"]
        new_name = new["metadata"]["name"]

        def joined() -> dict[str, Any] | None:
            run = demo.get("trainingruns", RUN)
            tr = run["status"].get("training") or {}
            world, seen = tr.get("worldPods") or [], tr.get("worldTime") or ""
            # a world confirmed after the replacement existed, with it and the other worker
            fresh = seen >= new["metadata"]["creationTimestamp"]
            return run if len(world) == 2 and new_name in world and fresh else None

        run = poll(joined, 120, "the replacement to join the Horovod world")
        t_joined = time.monotonic()
        assert run["status"]["phase"] == "Running", run["status"]
        assert not run["status"].get("launcherRestarts"), run["status"]  # the world just changed

        # --- 2. then the launcher dies ----------------------------------------------------
        def checkpointed() -> dict[str, Any] | None:
            tr = demo.get("trainingruns", RUN).get("status", {}).get("training") or {}
            return tr if tr.get("checkpoint") else None

        at_kill = poll(checkpointed, 120, "a checkpoint")
        launcher_uid, pid = poll(lambda: launcher_pid(demo), 30, "the launcher's process")
        os.kill(pid, signal.SIGKILL)
        t_launcher_killed = time.monotonic()

        def restarted() -> dict[str, Any] | None:
            run = demo.get("trainingruns", RUN)
            fresh = [p for p in demo.pods(RUN, "launcher") if p["metadata"]["uid"] != launcher_uid]
            return run if fresh and run["status"].get("launcherRestarts") == 1 else None

        run = poll(restarted, 120, "a new launcher after the back-off")
        assert run["status"]["phase"] in ("Running", "Succeeded")
        t_restarted = time.monotonic()

        done = poll(lambda: demo.finished(RUN), 300, "the run to finish")
        st = done["status"]
        assert st["phase"] == "Succeeded", st
        assert st["launcherRestarts"] == 1
        # no epoch trained twice from scratch, none skipped
        epochs = [h["epoch"] for h in st["training"]["history"]]
        assert epochs == list(range(1, EPOCHS + 1)), epochs
        # the new launcher's world holds the replacement and the other worker
        assert sorted(st["training"]["worldPods"]) == sorted(p["metadata"]["name"] for p in after)
        logs = demo.c.kubectl("logs", "-n", NS, f"{RUN}-launcher")
        resumed = [line for line in logs.splitlines() if "resumed from checkpoint" in line]
        assert resumed, logs[-3000:]
        events = demo.c.kubectl(
            "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={RUN}"
        )
        assert "WorkerLeftWorld" in events, events
        assert name in events
        assert "LauncherRestart" in events, events
        # finished: the workers are gone (the launcher pod stays for its logs)
        poll(lambda: demo.pods(RUN, "worker") == [], 60, "workers to be removed")
        print(
            f"killed the training process of {name} at epoch {before['epoch']}, the launcher at "
            f"epoch {at_kill['epoch']}; {resumed[0].strip()}; timings (s): trained 2 workers "
            f"{t_killed - t_applied:.1f}, replaced {t_replaced - t_killed:.1f}, joined "
            f"{t_joined - t_replaced:.1f}, launcher replaced "
            f"{t_restarted - t_launcher_killed:.1f}, "
            f"finished {time.monotonic() - t_restarted:.1f}, whole test {time.monotonic() - t0:.1f}"
        )
    finally:
        demo.c.down()
