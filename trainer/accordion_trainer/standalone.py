"""`python -m accordion_trainer run -np N`: elastic training on one machine, no cluster, no MinIO.

Each slot is its own "host" on a loopback address (127.0.0.2, 127.0.0.3, ...), one slot per host
like the pods in a cluster, so killing one worker does not blacklist the others. horovodrun starts
non-local hosts over `ssh`; standalone puts a tiny `ssh` shim first on PATH that runs the command
locally instead (no sshd needed). The host list lives in `<work>/hosts` (one `addr:1` per line):
edit it while a run is going to add or remove workers, exactly as the operator does with pods.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path

from .errors import parse_error_line
from .horovod_run import HOSTS_FILE_ENV
from .usercmd import training_entry

SSH_SHIM = """#!/bin/sh
# Standalone stand-in for ssh: horovodrun calls `ssh [-o K=V|-p P|-i F]... HOST [opts] CMD`.
# Drop the options and the host, run CMD locally (the per-host address is in HOROVOD_HOSTNAME).
host=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-p|-i|-l|-F) shift 2 ;;
    -*) shift ;;
    *) if [ -z "$host" ]; then host=$1; shift; else break; fi ;;
  esac
done
exec /bin/sh -c "$*"
"""

DISCOVERY = """#!/bin/sh
# Host discovery for horovodrun: the current host list, one `addr:slots` per line.
cat {hosts} 2>/dev/null || true
"""


def loopback_hosts(n: int, first: int = 2) -> list[str]:
    return [f"127.0.0.{first + i}" for i in range(n)]


def write_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def write_hosts(path: Path, hosts: list[str], slots: int = 1) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{h}:{slots}\n" for h in hosts))
    os.replace(tmp, path)


def horovodrun_argv(
    np: int,
    min_np: int,
    max_np: int,
    discovery: Path,
    interface: str | None,
    extra: list[str] | None = None,
    entry: list[str] | None = None,
) -> list[str]:
    """The horovodrun command line (elastic, Gloo). Shared by standalone and the launcher.
    `entry`: what runs on every slot (`usercmd.training_entry`), the built-in trainer if None."""
    argv = [
        sys.executable,
        "-m",
        "accordion_trainer.horovod_run",  # horovodrun, faster discovery poll
        "-np",
        str(np),
        "--min-np",
        str(min_np),
        "--max-np",
        str(max_np),
        "--host-discovery-script",
        str(discovery),
        "--gloo",
        "--elastic-timeout",
        "120",
        "--start-timeout",
        "60",
        "--reset-limit",
        "100",
    ]
    if interface:
        argv += ["--network-interfaces", interface]
    argv += extra or []
    argv += entry or [sys.executable, "-m", "accordion_trainer", "train"]
    return argv


def start_horovodrun(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """horovodrun with its output on a pipe, in a process group of its own (see stop_horovodrun)."""
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        cwd=cwd,
        start_new_session=True,
    )


def stop_horovodrun(proc: subprocess.Popen[str], grace: float = 15.0) -> None:
    """SIGTERM horovodrun; SIGKILL its whole process group if it is still there after `grace`.

    Why the group kill: horovod's elastic driver can hang after logging "failure count == 1 ->
    stop running" (seen in CI: a worker had exited with a contract error, the driver never did),
    and its workers hold our end of the output pipe open: the launcher would wait forever
    instead of reporting the error."""
    proc.terminate()

    def kill() -> None:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(grace, kill)
    timer.daemon = True
    timer.start()


def run(
    np: int,
    work: Path,
    env: dict[str, str],
    min_np: int = 1,
    max_np: int | None = None,
    hosts: list[str] | None = None,
    log_file: Path | None = None,
) -> int:
    """Run horovodrun over loopback hosts; stream its output to stdout (and `log_file`)."""
    work.mkdir(parents=True, exist_ok=True)
    bindir = work / "bin"
    bindir.mkdir(exist_ok=True)
    write_executable(bindir / "ssh", SSH_SHIM)
    hosts_file = work / "hosts"
    write_hosts(hosts_file, hosts or loopback_hosts(np))
    discovery = write_executable(work / "discover.sh", DISCOVERY.format(hosts=hosts_file))
    max_np = max_np or max(np, 8)
    full_env = {
        **env,
        "PATH": f"{bindir}{os.pathsep}{env.get('PATH', os.defpath)}",
        HOSTS_FILE_ENV: str(hosts_file),  # horovodrun reads it without the script
    }
    entry = training_entry(env.get("ACCORDION_MODEL", ""))
    argv = horovodrun_argv(np, min_np, max_np, discovery, "lo", entry=entry)
    out = log_file.open("a") if log_file else None
    try:
        proc = start_horovodrun(argv, full_env, work)
        assert proc.stdout is not None
        error = None
        for line in proc.stdout:
            if error is None:
                error = parse_error_line(line)
                if error is not None:
                    stop_horovodrun(proc)  # a contract reason (bad data/model): no retrying
            sys.stdout.write(line)
            sys.stdout.flush()
            if out:
                out.write(line)
                out.flush()
        rc = proc.wait()
        # horovodrun may exit 0 on our SIGTERM: the reported reason decides, not that race
        return error.exit_code if error is not None and rc == 0 else rc
    finally:
        if out:
            out.close()
