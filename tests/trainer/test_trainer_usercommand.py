"""A run's own command (`spec.model.command`) in the in-cluster halves: the example in
examples/user-command (its `train.py` uses `accordion_trainer.elastic.fit`) zipped into the data
bucket as a `bucketObject`, fetched by the worker pods, run by the launcher's horovodrun over
SSH, and resized under it: grown from 2 to 3 workers and shrunk back to 2 by editing the
launcher's host list, with one launcher process throughout. Also: a command that cannot start
fails the run with a classified reason.
"""

from __future__ import annotations

import io
import json
import secrets
import socket
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainer_support import (
    REPO,
    MinioServer,
    events,
    run_cli,
    run_env,
    stop_tree,
    trainer_cmd,
    wait_for,
)

pytestmark = pytest.mark.slow

EPOCHS = 30  # 0.4-1.6 s each at 2 workers: both resets happen by epoch ~3 (the running workers
# wait for a joining one), the rest is margin for a loaded machine; 0.9 val_accuracy from ~8
BATCH = 16
CODE_KEY = "code/user-command.zip"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _code_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(REPO / "examples" / "user-command" / "train.py", "user-command/train.py")
    return buf.getvalue()


def _digits_npz() -> bytes:
    from sklearn.datasets import load_digits

    digits = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=digits.data, y=digits.target)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cluster(
    trainer_minio: MinioServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Three worker "pods" (sshd on their own loopback addresses) of one run whose model is the
    zipped example in the data bucket."""
    tmp = tmp_path_factory.mktemp("usercommand")
    ssh_dir = tmp / "ssh"
    ssh_dir.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "id_ed25519")],
        check=True,
    )
    (ssh_dir / "authorized_keys").write_text((ssh_dir / "id_ed25519.pub").read_text())
    client = trainer_minio.client()
    bucket = f"uc-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    for key, blob in ((CODE_KEY, _code_zip()), ("digits/digits.npz", _digits_npz())):
        client.put_object(bucket, key, io.BytesIO(blob), len(blob))
    run = f"u{secrets.token_hex(3)}"
    base = 20 + secrets.randbelow(200)
    ips = [f"127.0.{base}.{i}" for i in (2, 3, 4)]
    ssh_port = _free_port(ips[0])
    common = {
        "ACCORDION_RUN_NAME": run,
        "ACCORDION_NAMESPACE": "test",
        "ACCORDION_SSH_DIR": str(ssh_dir),
        "ACCORDION_SSH_PORT": str(ssh_port),
        "ACCORDION_EPOCHS": str(EPOCHS),
        "ACCORDION_BATCH_SIZE": str(BATCH),
        "ACCORDION_CHECKPOINT_EPOCHS": "20",
        "ACCORDION_MODEL": json.dumps(
            {"bucketObject": f"{bucket}/{CODE_KEY}", "command": "python train.py"}
        ),
        "ACCORDION_HPARAMS": json.dumps({"learning_rate": 0.002, "units": 32}),
        "ACCORDION_DATA_ENDPOINT": trainer_minio.endpoint,
        "ACCORDION_DATA_BUCKET": bucket,
        "ACCORDION_DATA_PREFIX": "digits",
        "ACCORDION_RESULTS_ENDPOINT": trainer_minio.endpoint,
        "ACCORDION_RESULTS_BUCKET": bucket,
        "ACCORDION_RESULTS_PREFIX": "results",
        "ACCORDION_TF_THREADS": "1",
    }
    procs = []
    for i, ip in enumerate(ips):
        env = run_env(
            **common,
            ACCORDION_POD_IP=ip,
            ACCORDION_POD_NAME=f"{run}-worker-{i}",
            ACCORDION_WORKER_INDEX=str(i),
            ACCORDION_WORK_DIR=str(tmp / f"w{i}"),
            ACCORDION_TERMINATION_LOG=str(tmp / f"w{i}.term"),
            AWS_ACCESS_KEY_ID=trainer_minio.access_key,
            AWS_SECRET_ACCESS_KEY=trainer_minio.secret_key,
        )
        with (tmp / f"worker{i}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    trainer_cmd("worker"),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        for ip, proc in zip(ips, procs, strict=True):
            wait_for(lambda ip=ip: _listening(ip, ssh_port), 60, f"sshd on {ip}", proc)
        yield {"ips": ips, "common": common, "bucket": bucket, "client": client, "tmp": tmp}
    finally:
        for i, proc in enumerate(procs):
            stop_tree(proc, f"ACCORDION_WORK_DIR={tmp / f'w{i}'}")


def _launch(
    c: dict[str, Any], name: str, hosts: list[str], **extra: str
) -> subprocess.Popen[bytes]:
    tmp: Path = c["tmp"]
    hosts_file = tmp / f"{name}.hosts"
    hosts_file.write_text("".join(f"{h}\n" for h in hosts))
    env = run_env(
        **{**c["common"], **extra},
        ACCORDION_HOSTS=f"@{hosts_file}",  # re-read on every poll: the test resizes the run
        ACCORDION_POD_IP="127.0.0.1",
        ACCORDION_MIN_WORKERS="1",
        ACCORDION_MAX_WORKERS="3",
        ACCORDION_RESULTS_PATH=f"results/test/{name}",
        ACCORDION_LAUNCHER_DIR=str(tmp / name),
        ACCORDION_TERMINATION_LOG=str(tmp / f"{name}.term"),
    )
    with (tmp / f"{name}.log").open("w") as log:
        return subprocess.Popen(
            trainer_cmd("launcher"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _set_hosts(c: dict[str, Any], name: str, hosts: list[str]) -> None:
    tmp: Path = c["tmp"]
    (tmp / f"{name}.hosts.tmp").write_text("".join(f"{h}\n" for h in hosts))
    (tmp / f"{name}.hosts.tmp").replace(tmp / f"{name}.hosts")


def test_a_command_that_fails_at_start_is_model_invalid(cluster: dict[str, Any]) -> None:
    model = json.loads(cluster["common"]["ACCORDION_MODEL"])
    bad = json.dumps({**model, "command": "python missing.py"})
    proc = _launch(cluster, "bad", cluster["ips"][:2], ACCORDION_MODEL=bad)
    try:
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    log = (cluster["tmp"] / "bad.log").read_text()
    assert rc == 14, log[-3000:]
    term = (cluster["tmp"] / "bad.term").read_text()
    assert term.startswith(
        "ModelInvalid: model.command 'python missing.py' exited with 2 before training started"
    ), term
    assert "can't open file" in log  # the command's own output reaches the run's log


def _reset_pairs(evs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(interrupt, next start) pairs: the state at the interruption and after the re-sync."""
    pairs = []
    for i, e in enumerate(evs):
        if e["event"] == "interrupt":
            pairs.append((e, next(s for s in evs[i + 1 :] if s["event"] == "start")))
    return pairs


def test_the_command_grows_and_shrinks_batch_exact(cluster: dict[str, Any]) -> None:
    name, ips = "elastic", cluster["ips"]
    proc = _launch(cluster, name, ips[:2])
    log = cluster["tmp"] / f"{name}.log"

    def first_step(world: int, after: float = 0.0) -> list[dict[str, Any]]:
        return [
            e
            for e in events(log)
            if e["event"] == "first_step" and e["world_size"] == world and e["time"] > after
        ]

    try:
        wait_for(lambda: [e for e in first_step(2) if e["epoch"] >= 1], 180, "epoch 1", proc)
        _set_hosts(cluster, name, ips)
        grown = wait_for(lambda: first_step(3), 120, "a step at world size 3", proc)
        _set_hosts(cluster, name, [ips[0], ips[2]])
        wait_for(lambda: first_step(2, grown[0]["time"]), 120, "a step after the shrink", proc)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    # one launcher, one horovodrun: the run was resized, never restarted
    assert text.count("accordion_trainer.horovod_run") == 1
    # the hyperparameters reached the command as arguments
    assert "train.py --learning_rate 0.002 --units 32" in text
    evs = events(log)
    pairs = _reset_pairs(evs)
    sizes = [(i["world_size"], s["world_size"]) for i, s in pairs]
    assert (2, 3) in sizes, sizes
    assert (3, 2) in sizes, sizes
    for interrupt, start in pairs:  # batch-exact: the position and weights carried over
        assert start["epoch"] >= 1
        assert (start["epoch"], start["samples"]) == (interrupt["epoch"], interrupt["samples"])
        assert start["weights_checksum"] == pytest.approx(interrupt["weights_checksum"], rel=1e-9)
    assert evs[-1]["event"] == "done"
    progress = events(log, "PROGRESS")
    assert {p["worldSize"] for p in progress} >= {2, 3}
    client, bucket = cluster["client"], cluster["bucket"]
    folder = f"results/test/{name}"
    history = json.loads(client.get_object(bucket, f"{folder}/history.json").read())
    assert [h["epoch"] for h in history[-3:]] == [EPOCHS - 2, EPOCHS - 1, EPOCHS]
    assert history[-1]["val_accuracy"] > 0.9
    keys = [o.object_name for o in client.list_objects(bucket, f"{folder}/", recursive=True)]
    assert f"{folder}/model.keras" in keys
    assert any(k.endswith(".manifest.json") for k in keys), keys


PLAIN_HOROVOD = """
import sys
import horovod.tensorflow.keras as hvd
from tensorflow import keras

hvd.init()
model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
opt = hvd.DistributedOptimizer(keras.optimizers.SGD(0.01))
model.compile(loss="mse", optimizer=opt)
opt.build(model.trainable_variables)
state = hvd.elastic.KerasState(model, optimizer=opt, epoch=0)


@hvd.elastic.run
def train(state):
    while state.epoch < 3:
        state.epoch += 1
        state.commit()


train(state)
print("plain horovod done", hvd.size(), sys.argv[1:], flush=True)
"""


def test_standalone_runs_the_command_and_plain_horovod(tmp_path: Path) -> None:
    """`accordion-train run --command`: the example (helper API) and a script with its own
    Horovod elastic code, which runs too (no progress lines: it prints none)."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.py").write_text(PLAIN_HOROVOD)
    runs = {
        "example": (REPO / "examples" / "user-command", "2"),
        "plain": (plain, "1"),
    }
    for name, (code, epochs) in runs.items():
        rc = run_cli(
            [
                *("run", "-np", "1", "--model", str(code), "--command", "python train.py"),
                *("--results", str(tmp_path / "res"), "--run-name", name, "--epochs", epochs),
                *("--work", str(tmp_path / f"work-{name}"), "--hparam", "units=16"),
            ],
            tmp_path / f"{name}.log",
            240,
            ACCORDION_TF_THREADS="1",
        )
        assert rc == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    history = json.loads((tmp_path / "res" / "example" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    plain_log = (tmp_path / "plain.log").read_text()
    assert "plain horovod done 1 ['--units', '16']" in plain_log
    assert "ACCORDION_PROGRESS" not in plain_log
