"""The launcher's apiserver calls against the real local control plane, with the service-account
token and exactly the Role the contract gives the launcher (docs/contract.md): discovery lists the
run's Ready worker pods and watches them; progress patches `status.training` of its own run and
of no other."""

from __future__ import annotations

import re
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import yaml

from accordion_trainer.incluster import Reporter
from accordion_trainer.kube import ApiClient, ready_worker_ips, worker_selector

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "trainingruns.accordion.dev.yaml"
EXAMPLE = REPO / "examples" / "mnist-trainingrun.yaml"


def _ok(r: Any) -> Any:
    assert r.status_code < 300, r.text
    return r.json()


def _run(name: str) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": name}
    return dict(doc)


def _pod(name: str, role: str, index: int | None) -> dict[str, Any]:
    """A pod labelled as the operator labels them: a worker index on workers only (and on a
    launcher that hosts worker 0, which this test has not)."""
    labels = {"accordion.dev/run": "r1", "accordion.dev/role": role}
    if index is not None:
        labels["accordion.dev/worker-index"] = str(index)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "trainer", "image": "accordion-trainer:test"}],
            "tolerations": [{"operator": "Exists"}],
            "nodeSelector": {"type": "kwok"},
        },
    }


def test_discovery_and_status_patch_with_the_launcher_role(
    cluster: Any, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/trainingruns.accordion.dev"
    )
    with cluster.http() as http:
        for name in ("r1", "r2"):
            _ok(
                http.post(
                    f"/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns", json=_run(name)
                )
            )
        _ok(
            http.post(
                f"/api/v1/namespaces/{ns}/serviceaccounts",
                json={"metadata": {"name": "r1-launcher"}},
            )
        )
        _ok(
            http.post(
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
                json={
                    "metadata": {"name": "r1-launcher"},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "resources": ["pods"],
                            "verbs": ["get", "list", "watch"],
                        },
                        {
                            "apiGroups": ["accordion.dev"],
                            "resources": ["trainingruns/status"],
                            "verbs": ["get", "patch"],
                            "resourceNames": ["r1"],
                        },
                    ],
                },
            )
        )
        _ok(
            http.post(
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
                json={
                    "metadata": {"name": "r1-launcher"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "r1-launcher",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "r1-launcher", "namespace": ns}
                    ],
                },
            )
        )
        token = _ok(
            http.post(
                f"/api/v1/namespaces/{ns}/serviceaccounts/r1-launcher/token",
                json={
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"expirationSeconds": 600},
                },
            )
        )["status"]["token"]
        for i in range(2):
            _ok(
                http.post(f"/api/v1/namespaces/{ns}/pods", json=_pod(f"r1-worker-{i}", "worker", i))
            )
        _ok(http.post(f"/api/v1/namespaces/{ns}/pods", json=_pod("r1-launcher", "launcher", None)))

    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(token)
    (sa / "ca.crt").write_bytes((cluster.pki / "ca.crt").read_bytes())
    api = ApiClient.in_cluster({"ACCORDION_KUBE_API": cluster.server, "ACCORDION_SA_DIR": str(sa)})

    deadline = time.monotonic() + 60
    ips: list[str] = []
    while time.monotonic() < deadline and len(ips) < 2:
        ips = ready_worker_ips(api.list_pods(ns, worker_selector("r1")))
        time.sleep(0.5)
    assert len(ips) == 2, "kwok did not make both worker pods Ready"
    assert len(set(ips)) == 2
    # the watch that wakes the launcher's discovery at each change, with the same Role: it
    # starts with the pods there are (the launcher pod is not selected), ends after 1 s
    assert list(api.watch_pods(ns, worker_selector("r1"), 1)) == ["ADDED", "ADDED"]

    sent: list[dict[str, Any]] = []

    def send(status: dict[str, Any]) -> None:
        api.patch_run_status(ns, "r1", {"training": status})
        sent.append(status)

    rep = Reporter(send)
    rep.offer(
        {
            "epoch": 2,
            "batch": 5,
            "worldSize": 2,
            "metrics": {"loss": 0.25},
            "history": [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}],
            "checkpoint": "s3://b/p/r1/checkpoints/ckpt-e000002-s000000000",
        }
    )
    assert rep.errors == 0
    assert len(sent) == 1
    with cluster.http() as http:
        run = _ok(http.get(f"/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns/r1"))
    training = run["status"]["training"]
    assert training["epoch"] == 2
    assert training["worldSize"] == 2
    assert training["metrics"]["loss"] == 0.25
    assert training["checkpoint"].endswith("ckpt-e000002-s000000000")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", training["updatedAt"])

    # The Role names only its own run: another run's status is out of reach.
    with pytest.raises(urllib.error.HTTPError) as denied:
        api.patch_run_status(ns, "r2", {"training": {"epoch": 9}})
    assert denied.value.code == 403
