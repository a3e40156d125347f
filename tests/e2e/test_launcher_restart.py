"""A launcher that dies mid-training (issue 4: "launcher failure restarts it (backoffLimit,
exponential backoff) and training resumes from the last checkpoint"), end to end: the real
operator, real elastic training on process nodes, real MinIO. The launcher's process is killed
with SIGKILL (a crash, not a deletion): its pod fails, the operator waits out the back-off,
replaces it, and the new launcher resumes from the newest checkpoint in the results bucket
instead of starting again at epoch 0; the run then succeeds with one history entry per epoch."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from accordion_dev.cluster import Cluster, free_port_block
from accordion_dev.demo import NS, Demo, demo_config
from accordion_dev.polling import poll

RUN = "resilient"


def launcher_pid(demo: Demo) -> tuple[str, int] | None:
    """(pod uid, pid) of the running launcher: process nodes report `process://<node>/<pid>`."""
    for pod in demo.pods(RUN, "launcher"):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if "running" in (cs.get("state") or {}) and cs.get("containerID"):
                return pod["metadata"]["uid"], int(cs["containerID"].rsplit("/", 1)[1])
    return None


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_launcher_is_replaced_and_training_resumes_from_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the operator's first back-off, 10 s by default: the wait is the same code at any length
    monkeypatch.setenv("ACCORDION_LAUNCHER_BACKOFF_SECONDS", "2")
    demo = Demo(Cluster(demo_config(tmp_path / "cluster", free_port_block(first=25400))), ci=True)
    try:
        demo.cluster_up()
        demo.operator_up()
        demo.upload_data()
        doc = demo.manifest("mnist-trainingrun.yaml")
        doc["metadata"]["name"] = RUN
        doc["spec"]["epochs"] = 6
        doc["spec"]["checkpointEpochs"] = 1
        doc["spec"]["workers"].update({"min": 1, "max": 2})
        demo.apply(doc)

        def checkpointed() -> dict[str, Any] | None:
            tr = demo.get("trainingruns", RUN).get("status", {}).get("training") or {}
            return tr if tr.get("checkpoint") and (tr.get("epoch") or 0) >= 2 else None

        before = poll(checkpointed, 300, "two epochs and a checkpoint")
        uid, pid = poll(lambda: launcher_pid(demo), 30, "the launcher's process")
        os.kill(pid, signal.SIGKILL)
        killed_at = before["epoch"]

        def replaced() -> dict[str, Any] | None:
            run = demo.get("trainingruns", RUN)
            new = [p for p in demo.pods(RUN, "launcher") if p["metadata"]["uid"] != uid]
            return run if new and run["status"].get("launcherRestarts") == 1 else None

        run = poll(replaced, 120, "a new launcher after the back-off")
        assert run["status"]["phase"] in ("Running", "Succeeded")

        done = poll(lambda: demo.finished(RUN), 300, "the run to finish")
        st = done["status"]
        assert st["phase"] == "Succeeded", st
        assert st["launcherRestarts"] == 1
        epochs = [h["epoch"] for h in st["training"]["history"]]
        assert epochs == list(range(1, 7)), epochs  # no epoch trained twice from scratch
        logs = demo.c.kubectl("logs", "-n", NS, f"{RUN}-launcher")
        assert "resumed from checkpoint" in logs, logs[-3000:]
        resumed = [line for line in logs.splitlines() if "resumed from checkpoint" in line]
        print(f"killed at epoch {killed_at}; {resumed[0].strip()}")
        events = demo.c.kubectl(
            "get", "events", "-n", NS, "--field-selector", f"involvedObject.name={RUN}"
        )
        assert "LauncherRestart" in events
        # finished: the workers are gone (the launcher pod stays for its logs)
        poll(lambda: demo.pods(RUN, "worker") == [], 60, "workers to be removed")
    finally:
        demo.c.down()
