"""The in-cluster halves outside a cluster: `worker` pods serving sshd, a `launcher` reaching
them over SSH with the per-run key (docs/contract.md), data staged from MinIO by the workers.

The host list comes from `ACCORDION_HOSTS` (the launcher's documented out-of-cluster source)
instead of the apiserver; everything else (sshd, keys, horovodrun, Gloo, metrics, exit codes) is
the real thing, on per-worker loopback addresses as on the local process nodes.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainer_support import MinioServer, events, run_env, stop_tree, trainer_cmd, wait_for

pytestmark = pytest.mark.slow


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


@pytest.fixture
def ssh_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ssh"
    d.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id_ed25519")], check=True
    )
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    return d


def results_folder(run: str) -> str:
    return f"results/test/{run}-0123456789ab"


def _common(run: str, ssh_dir: Path, ssh_port: int, minio: MinioServer, bucket: str) -> dict:
    return {
        "ACCORDION_RUN_NAME": run,
        "ACCORDION_NAMESPACE": "test",
        "ACCORDION_SSH_DIR": str(ssh_dir),
        "ACCORDION_SSH_PORT": str(ssh_port),
        "ACCORDION_EPOCHS": "2",
        "ACCORDION_BATCH_SIZE": "64",
        "ACCORDION_CHECKPOINT_EPOCHS": "1",
        "ACCORDION_MODEL": json.dumps({"builtin": "mnist-cnn"}),
        "ACCORDION_HPARAMS": json.dumps({"learning_rate": 0.001}),
        "ACCORDION_DATA_ENDPOINT": minio.endpoint,
        "ACCORDION_DATA_BUCKET": bucket,
        "ACCORDION_DATA_PREFIX": "mnist",
        "ACCORDION_RESULTS_ENDPOINT": minio.endpoint,
        "ACCORDION_RESULTS_BUCKET": bucket,
        "ACCORDION_RESULTS_PREFIX": "results",
        # the run object's own folder, as the operator sets it (it wins over prefix + run name)
        "ACCORDION_RESULTS_PATH": results_folder(run),
        "ACCORDION_TF_THREADS": "1",
    }


@pytest.fixture
def workers(
    trainer_minio: MinioServer, mnist_dir: Path, ssh_dir: Path, tmp_path: Path
) -> Iterator[dict]:
    client = trainer_minio.client()
    bucket = f"run-{secrets.token_hex(4)}"
    client.make_bucket(bucket)
    client.fput_object(bucket, "mnist/mnist.npz", str(mnist_dir / "mnist.npz"))
    run = f"r{secrets.token_hex(3)}"
    base = 20 + secrets.randbelow(200)
    ips = [f"127.0.{base}.2", f"127.0.{base}.3"]
    ssh_port = _free_port(ips[0])
    metrics_port = _free_port(ips[0])
    common = _common(run, ssh_dir, ssh_port, trainer_minio, bucket)
    procs = []
    for i, ip in enumerate(ips):
        env = run_env(
            **common,
            ACCORDION_POD_IP=ip,
            ACCORDION_WORKER_INDEX=str(i),
            ACCORDION_WORK_DIR=str(tmp_path / f"w{i}"),
            ACCORDION_METRICS_PORT=str(metrics_port),
            ACCORDION_TERMINATION_LOG=str(tmp_path / f"w{i}.term"),
            AWS_ACCESS_KEY_ID=trainer_minio.access_key,
            AWS_SECRET_ACCESS_KEY=trainer_minio.secret_key,
        )
        log = (tmp_path / f"worker{i}.log").open("w")
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
        yield {
            "ips": ips,
            "common": common,
            "bucket": bucket,
            "run": run,
            "client": client,
            "metrics_port": metrics_port,
            "secret": trainer_minio.secret_key,
        }
    finally:
        for i, proc in enumerate(procs):
            stop_tree(proc, f"ACCORDION_WORK_DIR={tmp_path / f'w{i}'}")


def _launch(w: dict, tmp_path: Path, name: str, **extra: str) -> subprocess.Popen[bytes]:
    env = run_env(
        **{**w["common"], **extra},
        ACCORDION_HOSTS=",".join(w["ips"]),
        ACCORDION_POD_IP="127.0.0.1",
        ACCORDION_MIN_WORKERS="2",
        ACCORDION_MAX_WORKERS="2",
        ACCORDION_LAUNCHER_DIR=str(tmp_path / name),
        ACCORDION_TERMINATION_LOG=str(tmp_path / f"{name}.term"),
    )
    log = (tmp_path / f"{name}.log").open("w")
    return subprocess.Popen(
        trainer_cmd("launcher"),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _cmdlines_with(secret: str) -> list[str]:
    hits = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if secret.encode() in cmd:
            hits.append(cmd.replace(b"\0", b" ").decode(errors="replace")[:200])
    return hits


def test_launcher_trains_on_ssh_workers_with_staged_data(workers: dict, tmp_path: Path) -> None:
    proc = _launch(workers, tmp_path, "launcher")
    log = tmp_path / "launcher.log"
    try:
        wait_for(lambda: "epoch 1/2" in log.read_text(), 180, "the first epoch", proc)
        # Credentials reach the training processes through sshd, never a command line.
        assert _cmdlines_with(workers["secret"]) == []
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "world_size=2" in text
    # both training processes were the workers' warm ones (warm.py), handed horovodrun's start
    boots = events(log, "BOOT")
    assert len(boots) == 2, boots
    assert all(b["handoff"] for b in boots), boots
    worker_log = (tmp_path / "worker0.log").read_text()
    assert "[stage] 1/1 files" in worker_log
    history = json.loads(
        workers["client"]
        .get_object(workers["bucket"], f"{results_folder(workers['run'])}/history.json")
        .read()
    )
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["val_accuracy"] > 0.8
    # One /metrics per worker pod, fed by the worker (staging) and its training processes.
    url = f"http://{workers['ips'][0]}:{workers['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        scraped = r.read().decode()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if line.startswith("accordion_trainer_")
    }
    assert values["accordion_trainer_staging_bytes_total"] > 0
    assert values["accordion_trainer_steps_total"] > 0
    assert values["accordion_trainer_samples_total"] > 0


def test_launcher_reports_a_worker_error_reason(workers: dict, tmp_path: Path) -> None:
    proc = _launch(workers, tmp_path, "bad", ACCORDION_MODEL=json.dumps({"builtin": "nope"}))
    try:
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    assert rc == 14, (tmp_path / "bad.log").read_text()[-3000:]
    # the workers' warm processes, prepared for mnist-cnn, declined the start (the launcher's
    # model differs), which then failed in a process of its own with the contract's reason
    assert "declined a start" in (tmp_path / "worker0.log").read_text()
    term = (tmp_path / "bad.term").read_text()
    assert term.startswith("ModelInvalid: unknown built-in model 'nope'")


def test_a_launcher_hosting_worker_0_fails_with_its_workers_stage_in_reason(
    trainer_minio: MinioServer, ssh_dir: Path, tmp_path: Path
) -> None:
    """The launcher pod that hosts worker 0 (ACCORDION_WORKER_INDEX set) runs the worker's half
    as a child; when that child fails (here: no data under the prefix), the launcher stops
    horovodrun at once, instead of waiting out its start timeout for the host, and ends with the
    worker's exit code and reason."""
    bucket = f"run-{secrets.token_hex(4)}"
    trainer_minio.client().make_bucket(bucket)
    ip = f"127.0.{20 + secrets.randbelow(200)}.4"
    common = _common("hosting", ssh_dir, _free_port(ip), trainer_minio, bucket)
    env = run_env(
        **{**common, "ACCORDION_DATA_PREFIX": "nothing-here"},
        ACCORDION_HOSTS=ip,
        ACCORDION_POD_IP=ip,
        ACCORDION_WORKER_INDEX="0",
        ACCORDION_WORK_DIR=str(tmp_path / "w0"),
        ACCORDION_LAUNCHER_DIR=str(tmp_path / "launcher"),
        ACCORDION_TERMINATION_LOG=str(tmp_path / "term"),
        ACCORDION_START_TIMEOUT_S="600",
        AWS_ACCESS_KEY_ID=trainer_minio.access_key,
        AWS_SECRET_ACCESS_KEY=trainer_minio.secret_key,
    )
    log = tmp_path / "launcher.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            trainer_cmd("launcher"), env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        rc = proc.wait(timeout=90)  # not the 600 s start timeout
    finally:
        if proc.poll() is None:
            stop_tree(proc)
    assert rc == 12, log.read_text()[-3000:]
    assert (tmp_path / "term").read_text().startswith("DataNotFound"), log.read_text()[-3000:]
