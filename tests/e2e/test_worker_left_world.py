"""A training process killed inside a worker pod that stays Ready (issue 16), end to end: the
real operator, real elastic training on process nodes, real MinIO. Horovod drops the dead
process's host for good and trains on with the other worker; the trainer reports the smaller
world (`status.training.worldPods`); the operator deletes the pod that left it
(`WorkerLeftWorld`), creates a replacement (a new pod IP, which Horovod admits), and the run
succeeds with every epoch trained once and the launcher never restarted."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from accordion_dev.cluster import Cluster, free_port_block
from accordion_dev.demo import NS, Demo, demo_config
from accordion_dev.polling import poll

RUN = "leaver"
#: the operator's grace period here: short, and still longer than Horovod takes to notice a
#: worker that turned Ready (~1 s)
GRACE_S = 5
EPOCHS = 16


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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_whose_training_process_died_is_replaced_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = time.monotonic()
    monkeypatch.setenv("ACCORDION_WORLD_GRACE_SECONDS", str(GRACE_S))  # the operator's setting
    demo = Demo(Cluster(demo_config(tmp_path / "cluster", free_port_block(first=25600))), ci=True)
    try:
        demo.cluster_up()
        demo.operator_up()
        demo.upload_data()
        doc = demo.manifest("mnist-trainingrun.yaml")
        doc["metadata"]["name"] = RUN
        doc["spec"]["epochs"] = EPOCHS
        doc["spec"]["workers"].update({"min": 1, "max": 2})
        demo.apply(doc)
        t_applied = time.monotonic()

        def both_in_the_world() -> dict[str, Any] | None:
            tr = demo.get("trainingruns", RUN).get("status", {}).get("training") or {}
            return tr if len(tr.get("worldPods") or []) == 2 and tr.get("epoch", 0) >= 1 else None

        before = poll(both_in_the_world, 120, "two workers training")
        # not rank 0: its pod stays, so the test sees the world shrink rather than move
        [victim] = [
            p for p in demo.pods(RUN, "worker") if p["metadata"]["name"] != before["rank0Pod"]
        ]
        name, uid = victim["metadata"]["name"], victim["metadata"]["uid"]
        old_uids = {p["metadata"]["uid"] for p in demo.pods(RUN, "worker")}
        assert name in before["worldPods"]
        training_process(victim).send_signal(signal.SIGKILL)
        t_killed = time.monotonic()

        def replaced() -> list[dict[str, Any]] | None:
            now = demo.pods(RUN, "worker")
            ready = [
                p
                for p in now
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions") or []
                )
            ]
            gone = all(p["metadata"]["uid"] != uid for p in now)
            return ready if gone and len(ready) == 2 else None

        after = poll(replaced, 90, "the worker that left the world to be replaced")
        t_replaced = time.monotonic()
        [new] = [p for p in after if p["metadata"]["uid"] not in old_uids]
        # Its name is the first free index (the victim's own once that pod is gone); its pod IP
        # is new (process nodes hand addresses out in order), so Horovod's blacklist of the
        # victim's address does not keep it out.
        assert new["status"]["podIP"] != victim["status"]["podIP"]

        def joined() -> dict[str, Any] | None:
            run = demo.get("trainingruns", RUN)
            tr = run["status"].get("training") or {}
            world, seen = tr.get("worldPods") or [], tr.get("worldTime") or ""
            # a world confirmed after the replacement existed, with it and the other worker
            admitted = len(world) == 2 and new["metadata"]["name"] in world
            finished = run["status"].get("phase") in ("Succeeded", "Failed")
            fresh = seen >= new["metadata"]["creationTimestamp"]
            return run if (admitted and fresh) or finished else None

        poll(joined, 120, "the replacement to join the Horovod world")
        t_joined = time.monotonic()
        done = poll(lambda: demo.finished(RUN), 180, "the run to finish")
        st = done["status"]
        assert st["phase"] == "Succeeded", st
        assert not st.get("launcherRestarts"), st  # the world shrank and grew; no restart
        assert new["metadata"]["name"] in st["training"]["worldPods"], st["training"]
        assert len(st["training"]["worldPods"]) == 2, st["training"]
        epochs = [h["epoch"] for h in st["training"]["history"]]
        assert epochs == list(range(1, EPOCHS + 1)), epochs
        events = demo.c.kubectl(
            "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={RUN}"
        )
        assert "WorkerLeftWorld" in events, events
        assert name in events
        print(
            f"killed the training process of {name} at epoch {before['epoch']}; timings (s): "
            f"trained 2 workers {t_killed - t_applied:.1f}, replaced {t_replaced - t_killed:.1f}, "
            f"joined {t_joined - t_replaced:.1f}, finished {time.monotonic() - t_joined:.1f}, "
            f"whole test {time.monotonic() - t0:.1f}"
        )
    finally:
        demo.c.down()
