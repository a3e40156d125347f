"""TrainingRuns and Experiments on simulated (kwok) nodes, where no process runs: their bodies,
and playing the trainer and the kubelet to drive a run to its end. What the operator tests and
benchmarks share."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import httpx

from accordion_dev.polling import poll

MERGE = {"content-type": "application/merge-patch+json"}
TOLERATE_ALL = [{"operator": "Exists"}]  # kwok nodes carry the kwok and the GPU taint
LEARNING_RATE = {"name": "learning_rate", "type": "double", "min": 1e-4, "max": 1e-1, "log": True}


# What a TrainingRun's spec and an Experiment's run template share: the built-in model, results
# in the local MinIO, tolerating the simulated nodes' taints.
RUN_TEMPLATE: dict[str, Any] = {
    "model": {"builtin": "mnist-cnn"},
    "results": {
        "endpoint": "minio.local:9000",
        "bucket": "results",
        "credentialsSecret": {"name": "s3"},
    },
    "tolerations": TOLERATE_ALL,
}


def run_body(
    name: str,
    *,
    lo: int = 1,
    hi: int = 1,
    gpus: int = 1,
    priority_class: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A TrainingRun of `RUN_TEMPLATE` with `lo`..`hi` workers of `gpus` GPUs, of PriorityClass
    `priority_class` if given; `spec` overrides or adds spec fields. A fresh object (no part
    shared with the constants or another body): callers edit what they get."""
    if priority_class is not None:
        spec = {"priorityClassName": priority_class, **spec}
    return copy.deepcopy(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": name},
            "spec": {
                **RUN_TEMPLATE,
                "workers": {"min": lo, "max": hi, "gpusPerWorker": gpus},
                **spec,
            },
        }
    )


def experiment_body(
    name: str,
    *,
    metadata: Mapping[str, Any] | None = None,
    template: Mapping[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An Experiment that searches `learning_rate` (log-uniform) at random for the best
    val_accuracy; its runs are `RUN_TEMPLATE` for 3 epochs with a hyperparameter of their own
    (`dropout`), which reaches the training code next to the searched ones. `metadata`,
    `template` and `spec` override or add fields of each. A fresh object, as `run_body`'s."""
    return copy.deepcopy(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, **(metadata or {})},
            "spec": {
                "template": {
                    **RUN_TEMPLATE,
                    "epochs": 3,
                    "hyperparameters": {"dropout": 0.25},
                    **(template or {}),
                },
                "parameters": [LEARNING_RATE],
                "algorithm": "random",
                "objective": {"metric": "val_accuracy"},
                **spec,
            },
        }
    )


def results_path(run: Mapping[str, Any]) -> str:
    """The key prefix of a run's results in its results bucket, as docs/trainingrun.md ("Results
    layout") spells it, `<prefix>/<namespace>/<name>-<first 12 hex digits of its uid>`: written
    out here apart from the operator's code, so that the tests check the one against the other.
    `run` is the object as the apiserver returns it (with its namespace and uid)."""
    meta, prefix = run["metadata"], str(run["spec"]["results"].get("prefix") or "").strip("/")
    folder = f"{meta['namespace']}/{meta['name']}-{meta['uid'].replace('-', '')[:12]}"
    return f"{prefix}/{folder}" if prefix else folder


def finish_run(
    http: httpx.Client,
    ns: str,
    run: str,
    curve: list[float],
    *,
    timeout: float = 30.0,
    every: float = 0.25,
) -> None:
    """Wait for the run's launcher pod to run; report one epoch per value of `curve` (its
    val_accuracy) and the results' location (from the pod's environment, as the trainer reads
    it) into status.training, as rank 0 does through the launcher; then end the launcher pod
    with exit code 0. The run controller marks the run Succeeded itself (patching status.phase
    directly would race with it: it owns the phase)."""
    pod_url = f"/api/v1/namespaces/{ns}/pods/{run}-launcher"

    def running() -> bool:
        r = http.get(pod_url)
        return r.status_code == 200 and r.json().get("status", {}).get("phase") == "Running"

    poll(running, timeout, what=f"{run}-launcher to run", every=every)
    pod = http.get(pod_url).json()
    env = {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}
    history = [{"epoch": i + 1, "metrics": {"val_accuracy": v}} for i, v in enumerate(curve)]
    training = {
        "epoch": len(curve),
        "metrics": {"val_accuracy": curve[-1]},
        "history": history,
        "resultsURI": f"s3://{env['ACCORDION_RESULTS_BUCKET']}/{env['ACCORDION_RESULTS_PATH']}",
    }
    http.patch(
        f"/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns/{run}/status",
        json={"status": {"training": training}},
        headers=MERGE,
    ).raise_for_status()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    done = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}
    statuses = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": {"terminated": done},
        }
        for c in pod["spec"]["containers"]
    ]
    http.patch(
        pod_url + "/status",
        json={"status": {"phase": "Succeeded", "containerStatuses": statuses}},
        headers=MERGE,
    ).raise_for_status()
