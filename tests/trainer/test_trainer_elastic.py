"""Standalone elastic training on the real MNIST subset, with the world changing under it.

One run serves every assertion (the slow tier runs on two shared cores): it starts with two
workers, a third is added after the first epoch, one of the first two is removed, then the added
one is killed with SIGKILL; the run must still finish, >= 90% validation accuracy, and its
events/metrics must show that epoch, batch position and weights carried over each change.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from trainer_support import (
    events,
    run_env,
    stop_tree,
    trainer_cmd,
    training_pids,
    wait_for,
    write_hosts,
)

pytestmark = pytest.mark.slow

EPOCHS = 6


@dataclass
class ElasticRun:
    rc: int
    log: Path
    results: Path
    events: list[dict[str, Any]]
    scraped: str
    kill_time: float
    killed_at_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _starts(log: Path, world: int) -> list[dict[str, Any]]:
    return [e for e in events(log) if e["event"] == "start" and e["world_size"] == world]


@pytest.fixture(scope="module")
def elastic_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ElasticRun:
    import json

    tmp = tmp_path_factory.mktemp("elastic")
    work, results, log = tmp / "work", tmp / "results", tmp / "run.log"
    port = _free_port()
    args = [
        "run",
        "-np",
        "2",
        "--min-np",
        "1",
        "--data",
        str(mnist_dir),
        "--results",
        str(results),
        "--work",
        str(work),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "32",
        "--run-name",
        "mnist",
        "--metrics-port",
        str(port),
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            trainer_cmd(*args),
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=run_env(ACCORDION_TF_THREADS="1"),
        )
    try:
        wait_for(
            lambda: any(e.get("epoch", 0) >= 1 and e["event"] == "first_step" for e in events(log)),
            180,
            "the first epoch",
            proc,
        )
        write_hosts(work, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        wait_for(lambda: _starts(log, 3), 90, "world size 3", proc)
        wait_for(
            lambda: [e for e in events(log) if e["event"] == "first_step" and e["world_size"] == 3],
            60,
            "a step at size 3",
            proc,
        )
        with urllib.request.urlopen(f"http://127.0.0.4:{port}/metrics", timeout=5) as r:
            scraped = r.read().decode()
        write_hosts(work, ["127.0.0.2", "127.0.0.4"])
        wait_for(lambda: _starts(log, 2)[1:], 90, "world size 2 after removal", proc)
        wait_for(
            lambda: [
                e
                for e in events(log)
                if e["event"] == "first_step"
                and e["world_size"] == 2
                and e.get("since_interrupt_s")
            ],
            60,
            "a step at size 2",
            proc,
        )
        pids = wait_for(lambda: training_pids("127.0.0.4"), 10, "the added worker's pid")
        epoch_before = max(e.get("epoch", 0) for e in events(log))
        import time

        kill_time = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=240)
    finally:
        stop_tree(proc, f"ACCORDION_WORK_DIR={work}")
    run_dir = results / "mnist"
    history = json.loads((run_dir / "history.json").read_text()) if rc == 0 else []
    return ElasticRun(rc, log, run_dir, events(log), scraped, kill_time, epoch_before, history)


def test_two_workers_reach_90_percent(elastic_run: ElasticRun) -> None:
    assert elastic_run.rc == 0, elastic_run.log.read_text()[-3000:]
    assert [h["epoch"] for h in elastic_run.history] == list(range(1, EPOCHS + 1))
    assert elastic_run.history[-1]["val_accuracy"] >= 0.90
    assert elastic_run.events[-1]["event"] == "done"


def _reset_pairs(run: ElasticRun) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(interrupt, next start) pairs: the state at the interruption and after the re-sync."""
    pairs = []
    for i, e in enumerate(run.events):
        if e["event"] == "interrupt":
            nxt = next(s for s in run.events[i + 1 :] if s["event"] == "start")
            pairs.append((e, nxt))
    return pairs


def test_adding_a_worker_continues_epoch_batch_and_weights(elastic_run: ElasticRun) -> None:
    grow = [(i, s) for i, s in _reset_pairs(elastic_run) if s["world_size"] == 3]
    assert grow, "no reset to world size 3"
    interrupt, start = grow[0]
    assert interrupt["world_size"] == 2
    assert start["epoch"] >= 1, "restarted from epoch 0"
    assert (start["epoch"], start["samples"]) == (interrupt["epoch"], interrupt["samples"])
    assert start["weights_checksum"] == pytest.approx(interrupt["weights_checksum"], rel=1e-9)


def test_removing_a_worker_continues(elastic_run: ElasticRun) -> None:
    shrink = [
        (i, s)
        for i, s in _reset_pairs(elastic_run)
        if i["world_size"] == 3 and s["world_size"] == 2
    ]
    assert shrink, "no reset from 3 to 2 workers"
    interrupt, start = shrink[0]
    assert (start["epoch"], start["samples"]) == (interrupt["epoch"], interrupt["samples"])
    assert start["weights_checksum"] == pytest.approx(interrupt["weights_checksum"], rel=1e-9)


def test_sigkill_of_a_worker_does_not_stop_the_run(elastic_run: ElasticRun) -> None:
    assert elastic_run.rc == 0
    after = [
        e for e in elastic_run.events if e["event"] == "start" and e["time"] > elastic_run.kill_time
    ]
    assert after, "no re-start after the SIGKILL"
    assert after[0]["world_size"] == 1
    # It went on from the last commit, not from scratch.
    assert after[0]["epoch"] >= elastic_run.killed_at_epoch - 1
    assert all(e["epoch"] > 0 for e in after)


def test_batch_position_is_exact_across_resets(elastic_run: ElasticRun) -> None:
    # Within an epoch, the sample position only moves forward: nothing re-run, nothing skipped
    # beyond what was committed (a commit happens after every batch).
    for interrupt, start in _reset_pairs(elastic_run):
        assert start["samples"] == interrupt["samples"]
    steps = [e for e in elastic_run.events if e["event"] == "first_step"]
    for e in steps:
        assert e["samples"] % 32 == 0


def test_metrics_show_the_new_world(elastic_run: ElasticRun) -> None:
    lines = dict(
        line.rsplit(" ", 1)
        for line in elastic_run.scraped.splitlines()
        if line.startswith("accordion_trainer_") and "{" not in line
    )
    assert float(lines["accordion_trainer_world_size"]) == 3
    assert float(lines["accordion_trainer_steps_total"]) >= 1
    assert "accordion_trainer_step_seconds_count" in lines


def test_results_layout(elastic_run: ElasticRun) -> None:
    run_dir = elastic_run.results
    assert (run_dir / "model.keras").stat().st_size > 0
    assert (run_dir / "saved_model" / "saved_model.pb").exists()
    assert (run_dir / "logs" / "train.log").stat().st_size > 0
    manifests = sorted((run_dir / "checkpoints").glob("*.manifest.json"))
    assert manifests, "no checkpoint published"
    assert manifests[-1].name.startswith(f"ckpt-e{EPOCHS:06d}")


def test_learning_rate_follows_the_world_size(elastic_run: ElasticRun) -> None:
    starts = [e for e in elastic_run.events if e["event"] == "start"]
    assert {e["world_size"] for e in starts} >= {1, 2, 3}
    for e in starts:  # base 0.001 (the default), scaled by the world size at every (re)start
        assert e["learning_rate"] == pytest.approx(0.001 * e["world_size"], rel=1e-5)
