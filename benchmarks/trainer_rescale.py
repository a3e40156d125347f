"""Seconds from a host-list change to the first training step at the new world size.

One standalone run (2 workers, MNIST subset) is grown and shrunk several times by rewriting its
hosts file, exactly what the operator's pod changes do to the launcher's discovery. For each
change it records: change -> interrupt (discovery + notification), change -> first step at the
new size (the target, <= 10 s), and for grows how long the joining process took to start Python,
import TensorFlow and be ready (from its ACCORDION_BOOT line).

    .venv/bin/python -m benchmarks.trainer_rescale [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._trainer import env, events, sample_data, save, stop_run, trainer


def wait(pred: Any, timeout: float, proc: subprocess.Popen[bytes]) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        if proc.poll() is not None:
            raise RuntimeError("training exited early")
        time.sleep(0.1)
    raise TimeoutError


def write_hosts(work: Path, hosts: list[str]) -> float:
    tmp = work / "hosts.tmp"
    tmp.write_text("".join(f"{h}:1\n" for h in hosts))
    os.replace(tmp, work / "hosts")
    return time.time()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pretrace", default="1")
    ap.add_argument("--poll", default="0.25", help="ACCORDION_DISCOVERY_POLL_S")
    ap.add_argument("--name", default="trainer_rescale")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rescale-"))
    data = sample_data(tmp / "data")
    work, log = tmp / "work", tmp / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            trainer(
                "run",
                "-np",
                "2",
                "--data",
                str(data),
                "--results",
                str(tmp / "res"),
                "--work",
                str(work),
                "--epochs",
                "200",
                "--batch-size",
                "32",
                "--checkpoint-epochs",
                "0",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env(
                ACCORDION_PRETRACE=a.pretrace,
                ACCORDION_DISCOVERY_POLL_S=a.poll,
                ACCORDION_TF_THREADS="1",
            ),
        )
    changes: list[dict[str, Any]] = []
    try:
        wait(
            lambda: [e for e in events(log) if e["event"] == "first_step" and e["epoch"] >= 1],
            300,
            proc,
        )
        hosts = ["127.0.0.2", "127.0.0.3"]
        nxt = 4
        plan: list[str] = []
        for _ in range(a.repeats):
            plan += ["grow", "shrink", "swap"]
        for op in plan:
            if op == "grow":
                hosts = [*hosts, f"127.0.0.{nxt}"]
                nxt += 1
            elif op == "shrink":
                hosts = hosts[:-1]
            else:  # replace the oldest host (usually rank 0) by a new one
                hosts = [*hosts[1:], f"127.0.0.{nxt}"]
                nxt += 1
            time.sleep(3)  # let the previous change settle into steady steps
            t0 = write_hosts(work, hosts)
            n = len(hosts)

            def first_step_at(n: int = n, t0: float = t0) -> Any:
                # The first step after a re-start at the new size (a swap keeps the size, so
                # a step at size n alone could still be the old world's).
                evs = events(log)
                start = next(
                    (
                        e
                        for e in evs
                        if e["event"] == "start" and e["world_size"] == n and e["time"] > t0
                    ),
                    None,
                )
                if start is None:
                    return None
                return next(
                    (e for e in evs if e["event"] == "first_step" and e["time"] >= start["time"]),
                    None,
                )

            step = wait(first_step_at, 120, proc)
            intr = next(
                (e for e in events(log) if e["event"] == "interrupt" and e["time"] > t0), None
            )
            boots = [b for b in events(log, "BOOT") if b["start"] and b["start"] > t0]
            rec: dict[str, Any] = {
                "op": op,
                "world_size": len(hosts),
                "change_to_first_step_s": round(step["time"] - t0, 3),
                "change_to_interrupt_s": round(intr["time"] - t0, 3) if intr else None,
            }
            if boots:
                b = boots[0]
                rec["joiner_python_start_s"] = round(b["start"] - t0, 3)
                rec["joiner_tf_import_s"] = round(b["imported"] - b["start"], 3)
                rec["joiner_ready_s"] = round(b["ready"] - t0, 3)
            changes.append(rec)
            print(rec, flush=True)
    finally:
        stop_run(proc, work / "scratch")
    worst = max(c["change_to_first_step_s"] for c in changes)
    save(
        a.name,
        {
            "setup": {
                "np_start": 2,
                "batch_size": 32,
                "model": "mnist-cnn",
                "pretrace": a.pretrace,
                "discovery_poll_s": float(a.poll),
                "commit_every": "auto (~0.2 s of steps)",
            },
            "changes": changes,
            "max_change_to_first_step_s": worst,
            "target_s": 10.0,
            "met": worst <= 10.0,
        },
    )


if __name__ == "__main__":
    main()
