"""Streamed data (`train-*.npz` shards) trained standalone while the world grows from 2 to 3
workers and shrinks back to 2 mid-epoch: every sample of every shard is trained exactly once per
epoch (read from each process's `ACCORDION_SAMPLE_TRACE`), and a shard that cannot be read fails
the run with `DataUnreadable` (exit 13) naming it, before training (a bad header) or during it
(corrupt data behind a good header).
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainer_support import events, run_cli, run_env, stop_tree, trainer_cmd, wait_for, write_hosts

from accordion_trainer.data import mnist_sample
from accordion_trainer.shards import ID_SHIFT

pytestmark = pytest.mark.slow

EPOCHS = 4
BATCH = 16
#: uneven shards, 5,993 samples in all: batches and rank parts cross shard boundaries, and an
#: epoch ends with a short step
SIZES = [700, 300, 550, 450, 600, 400, 500, 500, 650, 350, 500, 493]


def write_sharded(root: Path, sizes: list[int], compress: set[int] | None = None) -> Path:
    """MNIST sample images (tiled) as `train-NNNNN.npz` shards, plus `val.npz`."""
    a = mnist_sample()
    x = np.concatenate([a["x_train"], a["x_train"]])
    y = np.concatenate([a["y_train"], a["y_train"]])
    root.mkdir(parents=True)
    start = 0
    for i, n in enumerate(sizes):
        save = np.savez_compressed if i in (compress or set()) else np.savez
        save(root / f"train-{i:05d}.npz", x=x[start : start + n], y=y[start : start + n])
        start += n
    np.savez(root / "val.npz", x=a["x_val"], y=a["y_val"])
    return root


@dataclass
class StreamedRun:
    rc: int
    log: Path
    events: list[dict[str, Any]]
    #: epoch -> (world size, sample ids) of every batch trained in it, all processes
    batches: dict[int, list[tuple[int, list[int]]]]


def _first_step(log: Path, world: int, epoch: int = 0) -> dict[str, Any] | None:
    """The first `first_step` event (a fit starting) at this world size in `epoch` or later:
    the moment to change the world so that the reset lands early in an epoch."""
    return next(
        (
            e
            for e in events(log)
            if e["event"] == "first_step" and e["world_size"] == world and e["epoch"] >= epoch
        ),
        None,
    )


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory: pytest.TempPathFactory) -> StreamedRun:
    tmp = tmp_path_factory.mktemp("streamed")
    data = write_sharded(tmp / "data", SIZES)
    work, trace, log = tmp / "work", tmp / "trace", tmp / "run.log"
    trace.mkdir()
    args = ["run", "-np", "2", "--min-np", "1", "--model", "mlp", "--data", str(data)]
    args += ["--results", str(tmp / "results"), "--work", str(work), "--run-name", "streamed"]
    args += ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--hparam", "units=64"]
    env = run_env(
        ACCORDION_TF_THREADS="1",
        ACCORDION_SAMPLE_TRACE=str(trace),
        # the running workers wait for the joiner, whose TensorFlow import alone took 50 s on
        # this shared machine under load (Horovod's default: 30 s, then they abort)
        HOROVOD_GLOO_TIMEOUT_SECONDS="180",
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            trainer_cmd(*args),
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for(lambda: _first_step(log, 2, epoch=1), 180, "the 2nd epoch at 2 workers", proc)
        write_hosts(work, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        grown = wait_for(lambda: _first_step(log, 3), 180, "a step at 3 workers", proc)["epoch"]
        # shrink early in the next epoch (the one the grow landed in may be nearly done)
        wait_for(lambda: _first_step(log, 3, grown + 1), 120, "an epoch at 3 workers", proc)
        write_hosts(work, ["127.0.0.2", "127.0.0.3"])
        rc = proc.wait(timeout=240)
    finally:
        stop_tree(proc, f"ACCORDION_WORK_DIR={work}")
    batches: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for f in trace.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            b = json.loads(line)
            batches[b["epoch"]].append((b["world"], b["ids"]))
    return StreamedRun(rc, log, events(log), dict(batches))


def test_the_streamed_run_finishes(streamed_run: StreamedRun) -> None:
    assert streamed_run.rc == 0, streamed_run.log.read_text()[-3000:]
    assert streamed_run.events[-1]["event"] == "done"
    assert sorted(streamed_run.batches) == list(range(EPOCHS))


def test_every_sample_is_trained_exactly_once_per_epoch(streamed_run: StreamedRun) -> None:
    every = {(s << ID_SHIFT) | r for s, n in enumerate(SIZES) for r in range(n)}
    for epoch, batches in streamed_run.batches.items():
        ids = [i for _, batch in batches for i in batch]
        assert len(ids) == len(set(ids)), f"epoch {epoch}: a sample trained twice"
        assert set(ids) <= every
        # only a remainder smaller than the world may be left (never more than 2 here)
        assert len(every - set(ids)) < 3, f"epoch {epoch}: {len(every - set(ids))} not trained"


def test_the_world_changed_mid_epoch(streamed_run: StreamedRun) -> None:
    worlds = {e: [w for w, _ in b] for e, b in streamed_run.batches.items()}
    grew = [e for e, ws in worlds.items() if 2 in ws and 3 in ws]
    assert grew, (
        f"no epoch trained at both 2 and 3 workers: { {e: set(w) for e, w in worlds.items()} }"
    )
    resets = [
        (e, next(s for s in streamed_run.events[i + 1 :] if s["event"] == "start"))
        for i, e in enumerate(streamed_run.events)
        if e["event"] == "interrupt"
    ]
    assert {s["world_size"] for _, s in resets} >= {2, 3}
    for interrupt, start in resets:  # the committed position carries over every reset
        assert (start["epoch"], start["samples"]) == (interrupt["epoch"], interrupt["samples"])
    assert any(i["samples"] > 0 for i, _ in resets), "no reset in the middle of an epoch"


def _run(data: Path, tmp: Path, np_: int = 1) -> tuple[int, str]:
    log = tmp / "run.log"
    args = ["run", "-np", str(np_), "--model", "mlp", "--data", str(data), "--results"]
    args += [str(tmp / "res"), "--run-name", "bad", "--epochs", "1", "--batch-size", "64"]
    rc = run_cli(args, log, timeout=240, ACCORDION_TF_THREADS="1")
    return rc, log.read_text()


def test_a_shard_unlike_the_others_fails_before_training(tmp_path: Path) -> None:
    data = write_sharded(tmp_path / "data", [300, 300, 300])
    x = np.zeros((300, 28, 28), np.float64)  # float64 among uint8 shards
    np.savez(data / "train-00001.npz", x=x, y=np.zeros(300, np.int64))
    rc, out = _run(data, tmp_path)
    assert rc == 13, out[-2000:]
    assert "DataUnreadable: shard train-00001.npz: x is float64 (28, 28) per sample" in out
    assert "ACCORDION_BOOT" not in out  # refused by the CLI before any worker started


def test_a_shard_corrupt_behind_its_header_fails_the_run_when_read(tmp_path: Path) -> None:
    data = write_sharded(tmp_path / "data", [300, 300, 300], compress={2})
    shard = data / "train-00002.npz"
    blob = bytearray(shard.read_bytes())
    with zipfile.ZipFile(shard) as zf:
        info = zf.getinfo("x.npy")
    mid = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    blob[mid : mid + 64] = bytes(64)
    shard.write_bytes(bytes(blob))
    rc, out = _run(data, tmp_path)
    assert rc == 13, out[-2000:]
    assert "ACCORDION_BOOT" in out  # it got as far as training
    assert "DataUnreadable: shard train-00002.npz: cannot be read" in out
