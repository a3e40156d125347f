"""Builders of TrainingRun objects for the operator's pure-logic tests."""

from __future__ import annotations

import copy
from typing import Any

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


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch semantics (None deletes)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_body(**patch: Any) -> dict[str, Any]:
    return merge(BASE, patch)


def make_run(**patch: Any) -> TrainingRun:
    return TrainingRun.model_validate(make_body(**patch))
