"""The faster rescale's parts without TensorFlow: when a warm process (accordion_trainer.warm)
declines a start, and the client's side of the hand-off against a real Unix socket; the
launcher's discovery woken by pod changes; horovodrun's discovery reading the hosts file; a
deleted worker keeping sshd until its training session has ended."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from accordion_trainer.horovod_run import read_hosts_file
from accordion_trainer.incluster import HostPoller, leave
from accordion_trainer.warm import WARM_DIR_ENV, decline_reason, hand_off, socket_path

BASE = {
    "ACCORDION_RUN_NAME": "r1",
    "ACCORDION_MODEL": json.dumps({"builtin": "mnist-cnn"}),
    "ACCORDION_HPARAMS": json.dumps({"learning_rate": 0.001}),
    "ACCORDION_EPOCHS": "3",
    "ACCORDION_BATCH_SIZE": "64",
    "ACCORDION_WORK_DIR": "/scratch/w0",
    "ACCORDION_DATA_DIR": "/data",
    "PROMETHEUS_MULTIPROC_DIR": "/scratch/w0/metrics",
    "ACCORDION_POD_GPUS": "0,1",
}
#: what horovodrun adds for the process of local rank 1 on an elastic start
STARTED = {"HOROVOD_ELASTIC": "1", "HOROVOD_LOCAL_RANK": "1", "HOROVOD_RANK": "3"}


def test_a_start_with_the_prepared_settings_is_taken() -> None:
    # the launcher's own variables (its address, horovod's) change nothing the warm process built
    given = {**BASE, **STARTED, "ACCORDION_POD_IP": "10.0.0.9", "HOROVOD_HOSTNAME": "10.0.0.2"}
    assert decline_reason(BASE, given, slot=1) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"ACCORDION_MODEL": json.dumps({"builtin": "mlp"})}, "the run's settings differ"),
        ({"ACCORDION_BATCH_SIZE": "32"}, "the run's settings differ"),
        ({"ACCORDION_HPARAMS": json.dumps({"learning_rate": 0.1})}, "the run's settings differ"),
        ({"ACCORDION_TF_THREADS": "1"}, "ACCORDION_TF_THREADS differs"),
        ({"ACCORDION_POD_GPUS": "1"}, "ACCORDION_POD_GPUS differs"),
        ({"HOROVOD_LOCAL_RANK": "0"}, "local rank 0 is not slot 1"),
        ({"HOROVOD_ELASTIC": "0"}, "not an elastic horovodrun start"),
        ({"ACCORDION_EPOCHS": "many"}, "unreadable settings"),
    ],
)
def test_a_start_that_differs_is_declined(change: dict[str, str], reason: str) -> None:
    got = decline_reason(BASE, {**BASE, **STARTED, **change}, slot=1)
    assert got is not None
    assert got.startswith(reason), got


def _server(path: Path, answers: list[bytes], seen: dict[str, Any]) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        seen["msg"] = json.loads(data)
        # the client's stdout, passed over the socket, is writable here
        os.write(fds[1], b"")
        seen["fds"] = len(fds)
        for fd in fds:
            os.close(fd)
        for answer in answers:
            conn.send(answer)
        conn.close()
        listener.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_the_client_hands_over_and_exits_with_the_warm_process_code(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    t = _server(socket_path(tmp_path, 1), [f"A{os.getpid()}".encode(), b"X7"], seen)
    env = {**BASE, **STARTED, WARM_DIR_ENV: str(tmp_path)}
    assert hand_off(env) == 7
    t.join(5)
    assert seen["fds"] == 3
    assert seen["msg"]["env"] == env
    assert seen["msg"]["cwd"] == os.getcwd()
    assert abs(seen["msg"]["time"] - time.time()) < 30


def test_a_declined_or_missing_warm_process_leaves_the_start_to_the_client(
    tmp_path: Path,
) -> None:
    env = {**BASE, **STARTED, WARM_DIR_ENV: str(tmp_path)}
    assert hand_off(env) is None  # no socket
    t = _server(socket_path(tmp_path, 1), [b"Dthe run's settings differ"], {})
    assert hand_off(env) is None
    t.join(5)
    assert hand_off({**env, "HOROVOD_ELASTIC": "0"}) is None  # never even tried
    assert hand_off({k: v for k, v in env.items() if k != WARM_DIR_ENV}) is None


def test_a_warm_process_that_dies_fails_the_start(tmp_path: Path) -> None:
    t = _server(socket_path(tmp_path, 1), [b"A1"], {})  # accepted, then gone without a code
    assert hand_off({**BASE, **STARTED, WARM_DIR_ENV: str(tmp_path)}) == 1
    t.join(5)


def test_pod_changes_wake_the_host_discovery_at_once(tmp_path: Path) -> None:
    answers = [["10.0.0.1"], ["10.0.0.1", "10.0.0.2"]]
    changed = threading.Event()

    def fetch() -> list[str]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def changes() -> Any:
        changed.wait(10)
        yield "MODIFIED"  # the second pod turned Ready
        time.sleep(60)  # then nothing, for longer than the test

    hosts = tmp_path / "hosts"
    poller = HostPoller(hosts, fetch, interval_s=60, changes=changes)
    poller.start()
    assert hosts.read_text() == "10.0.0.1:1\n"
    changed.set()
    deadline = time.monotonic() + 5
    while hosts.read_text() != "10.0.0.1:1\n10.0.0.2:1\n":
        assert time.monotonic() < deadline, "the change did not reach the hosts file"
        time.sleep(0.02)
    poller.stop()


def test_horovodrun_reads_the_hosts_file_as_the_script_would_print_it(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    assert read_hosts_file(f) == ""  # not written yet: no hosts, as `cat` would print
    f.write_text("127.0.0.2:1\n")
    assert read_hosts_file(f) == "127.0.0.2:1\n"


def _sshd_with_session(session_s: float) -> subprocess.Popen[bytes]:
    """A stand-in for the listening sshd: a process with one child (a session) that lasts
    `session_s`, then idles until it is terminated."""
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', 'import time; time.sleep({session_s})'])\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while not psutil.Process(proc.pid).children():  # its session has started
        assert time.monotonic() < deadline, "the stand-in's session did not start"
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize(
    ("session_s", "wait_s", "low", "high"), [(2.0, 10, 0.5, 8.0), (30, 1, 0.9, 4.0)]
)
def test_a_deleted_worker_stops_sshd_once_its_sessions_ended(
    session_s: float, wait_s: float, low: float, high: float
) -> None:
    """leave(): sshd is stopped when the training session has ended (Horovod took the process
    out), or after `wait_s` when it does not."""
    sshd = _sshd_with_session(session_s)
    # Only the stand-in's own session: the test process's other children (a session cluster's
    # apiserver and etcd, when the whole suite runs) are not this test's to kill.
    sessions = psutil.Process(sshd.pid).children(recursive=True)
    t0 = time.monotonic()
    leave(sshd, wait_s)
    took = time.monotonic() - t0
    assert sshd.wait(10) == -signal.SIGTERM
    assert low <= took <= high, took
    for child in sessions:  # the 30 s session, if left
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
