"""The launcher's half of progress reporting (docs/contract.md): rank 0's `ACCORDION_PROGRESS`
lines, relayed by horovodrun, become merge-patches of `status.training` (at most every 2 s, and
on every epoch change)."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PROGRESS_MARKER = "ACCORDION_PROGRESS "
REPORT_MIN_INTERVAL_S = 2.0
#: the CRD's bound on `status.training.worldPods` (its MAX_WORKERS)
WORLD_LIMIT = 1024


def decide_report(now: float, last_sent: float | None, last_epoch: int | None, epoch: int) -> bool:
    """Send a progress patch on every epoch change, otherwise at most every 2 s (pure)."""
    if last_sent is None or last_epoch != epoch:
        return True
    return now - last_sent >= REPORT_MIN_INTERVAL_S


def _finite(values: dict[str, Any]) -> dict[str, float]:
    """The numeric values, without NaN and infinities: JSON cannot carry them, so one would make
    the apiserver refuse this patch and, as the history repeats it, every later one. A diverged
    run fails on its own (`TrainingDiverged`); its last finite metrics stay in the status."""
    return {
        k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)
    }


def _epoch_record(entry: dict[str, Any]) -> dict[str, Any]:
    """One history entry in the CRD's shape `{epoch, metrics: {...}}` (the trainer keeps flat
    `{epoch, loss, ...}` records; the apiserver would prune unknown flat keys)."""
    metrics = entry.get("metrics")
    if not isinstance(metrics, dict):
        metrics = {k: v for k, v in entry.items() if k != "epoch"}
    return {"epoch": int(entry.get("epoch", 0)), "metrics": _finite(metrics)}


def build_training_status(progress: dict[str, Any], now: float) -> dict[str, Any]:
    """`status.training` as the contract spells it, from one progress line (pure)."""
    out: dict[str, Any] = {
        "epoch": int(progress.get("epoch", 0)),
        "batch": int(progress.get("batch", 0)),
        "worldSize": int(progress.get("worldSize", 0)),
        "metrics": _finite(progress.get("metrics") or {}),
        "history": [_epoch_record(h) for h in list(progress.get("history") or [])[-50:]],
        "updatedAt": _rfc3339(now),
    }
    for key in ("checkpoint", "resultsURI", "rank0Pod"):
        if progress.get(key):
            out[key] = str(progress[key])
    world, seen = progress.get("worldPods"), progress.get("worldTime")
    if isinstance(world, list) and world and isinstance(seen, int | float) and seen > 0:
        # the pods of the Horovod world, and when rank 0 last confirmed them (its last commit)
        out["worldPods"] = [str(p) for p in world][:WORLD_LIMIT]
        out["worldTime"] = _rfc3339(seen)
    return out


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class Reporter:
    send: Callable[[dict[str, Any]], None]
    clock: Callable[[], float] = time.time
    last_sent: float | None = None
    last_epoch: int | None = None
    pending: dict[str, Any] | None = None
    errors: int = 0
    sent: list[float] = field(default_factory=list)

    def offer(self, progress: dict[str, Any], force: bool = False) -> None:
        now = self.clock()
        epoch = int(progress.get("epoch", 0))
        if not (force or decide_report(now, self.last_sent, self.last_epoch, epoch)):
            self.pending = progress
            return
        self.pending = None
        try:
            self.send(build_training_status(progress, now))
        except Exception as e:  # a status write must never stop training
            self.errors += 1
            print(f"[launcher] status patch failed: {e!r}", file=sys.stderr, flush=True)
            return
        self.last_sent, self.last_epoch = now, epoch
        self.sent.append(now)

    def flush(self) -> None:
        if self.pending is not None:
            self.offer(self.pending, force=True)


def parse_progress(line: str) -> dict[str, Any] | None:
    """A progress line as relayed by horovodrun (`[N]<stdout>:ACCORDION_PROGRESS {...}`).

    Only the current rank 0 prints them; the `[N]` prefix is the rank the process was started
    with, which elastic resets change, so it is ignored."""
    _, marker, rest = line.partition(PROGRESS_MARKER)
    if not marker:
        return None
    try:
        doc = json.loads(rest)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
