"""Helpers for the trainer's slow tests: run the CLI, read its event lines, find workers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minio import Minio

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MinioServer:
    """The trainer tests' own MinIO (fixture `trainer_minio` in this folder's conftest)."""

    endpoint: str
    access_key: str
    secret_key: str

    def client(self) -> Minio:
        return Minio(self.endpoint, self.access_key, self.secret_key, secure=False)


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "accordion_trainer", *args]


def events(log: Path, kind: str = "EVENT") -> list[dict[str, Any]]:
    """Rank 0's `ACCORDION_<kind> {json}` lines in a run's log, in order."""
    marker = f"ACCORDION_{kind} "
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if marker in line:  # only the current rank 0 prints them, whatever its `[N]` prefix
            out.append(json.loads(line.split(marker, 1)[1]))
    return out


def wait_for(pred: Callable[[], Any], timeout: float, what: str, proc: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def training_pids(host: str) -> list[int]:
    """PIDs of `accordion_trainer train` processes started for `host` (HOROVOD_HOSTNAME)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"accordion_trainer" in cmd
            and b"train" in cmd
            and (f"HOROVOD_HOSTNAME={host}".encode() in env)
        ):
            pids.append(int(proc.name))
    return pids


def write_hosts(work: Path, hosts: list[str]) -> float:
    tmp = work / "hosts.tmp"
    tmp.write_text("".join(f"{h}:1\n" for h in hosts))
    os.replace(tmp, work / "hosts")
    return time.time()


def run_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def pids_with_env(needle: str) -> list[int]:
    """Processes whose environment contains `needle` (e.g. a test's own work dir)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle.encode() in (proc / "environ").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                continue
    return out


def stop_tree(proc: subprocess.Popen[Any], needle: str | None = None) -> None:
    """Stop a process started with `start_new_session=True`, its group, and any process left
    with `needle` in its environment (training processes started through horovodrun/sshd)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in pids_with_env(needle) if needle else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_cli(args: list[str], log: Path, timeout: float, **env: str) -> int:
    with log.open("w") as f:
        proc = subprocess.Popen(
            trainer_cmd(*args),
            stdout=f,
            stderr=subprocess.STDOUT,
            env=run_env(**env),
            start_new_session=True,
        )
        try:
            return proc.wait(timeout)
        finally:
            if proc.poll() is None:
                stop_tree(proc)
