"""Stopping horovodrun: a driver that ignores SIGTERM (horovod's elastic driver can hang after a
worker's contract error) must still end, with the workers that hold its output pipe."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from accordion_trainer.standalone import start_horovodrun, stop_horovodrun

# a "driver" that ignores SIGTERM and a "worker" child that keeps the output pipe open
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ready", flush=True)
time.sleep(60)
"""


def test_a_driver_that_ignores_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    proc = start_horovodrun([sys.executable, "-c", STUBBORN], {}, tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    t = time.monotonic()
    stop_horovodrun(proc, grace=0.5)
    rest = proc.stdout.read()  # EOF only once the child holding the pipe is gone too
    assert proc.wait(timeout=10) == -9
    assert rest == ""
    assert time.monotonic() - t < 10


def test_a_driver_that_exits_on_sigterm_is_not_killed(tmp_path: Path) -> None:
    proc = start_horovodrun(
        [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
        {},
        tmp_path,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    stop_horovodrun(proc, grace=0.5)
    assert proc.wait(timeout=10) == -15
    time.sleep(1)  # past the grace: the timer finds it gone and does nothing
    assert proc.returncode == -15
