"""Builders of TrainingRun objects for the operator's pure-logic tests."""

from __future__ import annotations

from typing import Any

from merge_patch import merge

from accordion_operator.api.trainingrun import TrainingRun

BASE: dict[str, Any] = {
    "apiVersion": "accordion.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {
        "name": "mnist",
        "namespace": "team-a",
        "uid": "uid-1",
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
