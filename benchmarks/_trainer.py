"""Helpers shared by the trainer benchmarks (`python -m benchmarks.trainer_*`)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_1m_at_start": round(load[0], 2),
        "note": "2 shared cores; other engineers' jobs ran at the same time, so absolute "
        "numbers are noisy; ratios measured back to back are the useful part",
    }


def save(name: str, doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **doc,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return path


def events(log: Path, kind: str = "EVENT") -> list[dict[str, Any]]:
    marker = f"ACCORDION_{kind} "
    return [
        json.loads(line.split(marker, 1)[1])
        for line in log.read_text(errors="replace").splitlines()
        if marker in line
    ]


def trainer(*args: str) -> list[str]:
    return [sys.executable, "-m", "accordion_trainer", *args]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


def pids_with_env(needle: str) -> list[int]:
    """Processes whose environment contains `needle` (the run's own work dir): how a run's
    training processes, started through horovodrun and the ssh shim, are found for cleanup."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle.encode() in (proc / "environ").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                continue
    return [p for p in out if p != os.getpid()]


def stop_run(proc: subprocess.Popen[bytes], work: Path) -> None:
    """Stop a standalone run and every process it started (by PID, never by name)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in pids_with_env(f"ACCORDION_WORK_DIR={work}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sample_data(dest: Path) -> Path:
    if not (dest / "mnist.npz").exists():
        subprocess.run(
            trainer("dataset", "--out", str(dest), "--format", "npz"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return dest
