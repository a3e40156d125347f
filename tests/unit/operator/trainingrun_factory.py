"""Builders of TrainingRun objects and their pods for the operator's pure-logic tests."""

from __future__ import annotations

from typing import Any

from merge_patch import merge

from accordion_operator.api.trainingrun import TrainingRun
from accordion_operator.trainingrun.observe import PodState

BASE: dict[str, Any] = {
    "apiVersion": "accordion.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {
        "name": "mnist",
        "namespace": "team-a",
        "uid": "5f0c3a9e-8d21-4b7e-9a43-2c1d0e6f7b8a",
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    },
    "spec": {
        "model": {"builtin": "mnist-cnn"},
        "results": {
            "endpoint": "minio:9000",
            "bucket": "results",
            "credentialsSecret": {"name": "s3"},
        },
        "workers": {"min": 1, "max": 4, "gpusPerWorker": 1},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    },
}


def make_body(**patch: Any) -> dict[str, Any]:
    return merge(BASE, patch)


def make_run(**patch: Any) -> TrainingRun:
    return TrainingRun.model_validate(make_body(**patch))


def pod(
    name: str,
    *,
    role: str = "worker",
    index: int | None = None,
    phase: str = "Running",
    ready: bool | None = None,
    node: str | None = "n1",
    deleting: bool = False,
    gpus: int = 1,
    exit_code: int | None = None,
    message: str = "",
    waiting_reason: str | None = None,
    waiting_message: str = "",
    finished_at: float | None = None,
    ready_since: float | None = None,
    created: float | None = None,
    max_workers: int | None = None,
) -> PodState:
    """A child pod of the run `mnist` as the controller observes it; Ready while Running unless
    `ready` says otherwise."""
    return PodState(
        name=name,
        run="mnist",
        role=role,
        index=index,
        phase=phase,
        ready=phase == "Running" if ready is None else ready,
        node=node,
        deleting=deleting,
        gpus=gpus,
        exit_code=exit_code,
        message=message,
        waiting_reason=waiting_reason,
        waiting_message=waiting_message,
        finished_at=finished_at,
        ready_since=ready_since,
        created=created,
        max_workers=max_workers,
    )


def worker(index: int, **state: Any) -> PodState:
    """Worker `index` of the run `mnist` (one GPU); keywords as for `pod`."""
    return pod(f"mnist-worker-{index}", role="worker", index=index, **state)


def launcher(**state: Any) -> PodState:
    """The launcher of the run `mnist` (no GPU); keywords as for `pod`."""
    return pod("mnist-launcher", role="launcher", **{"gpus": 0, **state})
