"""`helm test`: apply a tiny TrainingRun, wait until it succeeds, delete it.

Standard library only, so any Python image runs it. Configuration comes from the environment
(set by templates/tests/smoke.yaml); it talks to the apiserver with the pod's service account.
Exit 0 when the run reached phase Succeeded, 1 when it failed or timed out.
"""

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"
HOST = os.environ["KUBERNETES_SERVICE_HOST"]
PORT = os.environ["KUBERNETES_SERVICE_PORT"]
NS = os.environ["SMOKE_NAMESPACE"]
NAME = os.environ["SMOKE_RUN_NAME"]
TIMEOUT = float(os.environ.get("SMOKE_TIMEOUT_SECONDS", "600"))
BASE = f"https://{HOST}:{PORT}/apis/accordion.dev/v1alpha1/namespaces/{NS}/trainingruns"


def call(method, url, body=None):
    with open(f"{SA}/token") as f:
        token = f.read().strip()
    data = None if body is None else json.dumps(body).encode()
    # always https://<apiserver>/...: the URL is built from BASE above, never from input
    req = urllib.request.Request(url, method=method, data=data)  # noqa: S310
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # noqa: S310
        return json.load(resp)


def main():
    store = {
        "endpoint": os.environ["SMOKE_ENDPOINT"],
        "secure": os.environ["SMOKE_SECURE"] == "true",
        "bucket": os.environ["SMOKE_BUCKET"],
        "credentialsSecret": {"name": os.environ["SMOKE_SECRET"]},
    }
    run = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": NAME, "labels": {"accordion.dev/helm-test": "true"}},
        "spec": {
            "model": {"builtin": os.environ["SMOKE_MODEL"]},
            "epochs": 1,
            "workers": {"min": 1, "max": 1, "gpusPerWorker": int(os.environ["SMOKE_GPUS"])},
            "data": {**store, "prefix": os.environ["SMOKE_DATA_PREFIX"]},
            "results": {**store, "prefix": "helm-test/"},
        },
    }
    try:
        call("DELETE", f"{BASE}/{NAME}")  # a leftover of an interrupted test
        time.sleep(2)
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    call("POST", BASE, run)
    print(f"created TrainingRun {NS}/{NAME}; waiting up to {TIMEOUT:.0f} s", flush=True)
    deadline = time.monotonic() + TIMEOUT
    phase = None
    try:
        while time.monotonic() < deadline:
            status = call("GET", f"{BASE}/{NAME}").get("status", {})
            if status.get("phase") != phase:
                phase = status.get("phase")
                print(f"phase: {phase}  {status.get('message', '')}", flush=True)
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(3)
    finally:
        call("DELETE", f"{BASE}/{NAME}")
    if phase != "Succeeded":
        print(f"FAILED: run ended in phase {phase!r} (conditions: {status.get('conditions')})")
        return 1
    print("OK: the run succeeded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
