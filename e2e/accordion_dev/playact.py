"""Playing the trainer and the kubelet for TrainingRuns on simulated (kwok) nodes, where no
process runs: what the operator tests and benchmarks do to drive a run to its end."""

from __future__ import annotations

import time
from typing import Any

import httpx

from accordion_dev.polling import poll

MERGE = {"content-type": "application/merge-patch+json"}
TOLERATE_ALL = [{"operator": "Exists"}]  # kwok nodes carry the kwok and the GPU taint


def run_body(
    name: str, *, lo: int = 1, hi: int = 1, gpus: int = 1, priority: int = 0, **spec: Any
) -> dict[str, Any]:
    """A TrainingRun of the built-in model that tolerates the simulated nodes' taints, with
    `lo`..`hi` workers of `gpus` GPUs; `spec` overrides or adds spec fields."""
    return {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "model": {"builtin": "mnist-cnn"},
            "results": {
                "endpoint": "minio.local:9000",
                "bucket": "results",
                "credentialsSecret": {"name": "s3"},
            },
            "workers": {"min": lo, "max": hi, "gpusPerWorker": gpus},
            "priority": priority,
            "tolerations": TOLERATE_ALL,
            **spec,
        },
    }


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
    val_accuracy) into status.training, as rank 0 does through the launcher; then end the
    launcher pod with exit code 0. The run controller marks the run Succeeded itself (patching
    status.phase directly would race with it: it owns the phase)."""
    pod_url = f"/api/v1/namespaces/{ns}/pods/{run}-launcher"

    def running() -> bool:
        r = http.get(pod_url)
        return r.status_code == 200 and r.json().get("status", {}).get("phase") == "Running"

    poll(running, timeout, what=f"{run}-launcher to run", every=every)
    history = [{"epoch": i + 1, "metrics": {"val_accuracy": v}} for i, v in enumerate(curve)]
    training = {
        "epoch": len(curve),
        "metrics": {"val_accuracy": curve[-1]},
        "history": history,
        "resultsURI": f"s3://results/{run}",
    }
    http.patch(
        f"/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns/{run}/status",
        json={"status": {"training": training}},
        headers=MERGE,
    ).raise_for_status()
    pod = http.get(pod_url).json()
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
