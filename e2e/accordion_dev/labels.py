"""The labels the operator puts on a run's pods (docs/contract.md), as the dev tools, tests and
benchmarks select them."""

from __future__ import annotations

RUN = "accordion.dev/run"
ROLE = "accordion.dev/role"
WORKER_INDEX = "accordion.dev/worker-index"


def hosts(run: str) -> str:
    """The label selector of a run's Horovod hosts: its worker pods, and its launcher when that
    hosts worker 0 (the pods with a worker index), whichever way the operator runs the
    launcher."""
    return f"{RUN}={run},{WORKER_INDEX}"
