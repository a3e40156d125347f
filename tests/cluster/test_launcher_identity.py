"""The launchers' identity against the real apiserver: one ServiceAccount, Role and RoleBinding
`accordion-launcher` per namespace, owned by the launcher admission policy, shared by the
namespace's runs, and removed by the operator once the namespace has had no run for
ACCORDION_LAUNCHER_IDENTITY_IDLE_SECONDS (here 3 s instead of 600); a new run brings it back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_support import Api, Operator, running_operator

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body

pytestmark = pytest.mark.cluster

KWOK = {"type": "kwok"}
IDENTITY = (
    "/api/v1/namespaces/{ns}/serviceaccounts/accordion-launcher",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/accordion-launcher",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/accordion-launcher",
)


@pytest.fixture
def quick_operator(cluster: Cluster, trainingrun_crd: str, tmp_path: Path) -> Iterator[Operator]:
    env = {"ACCORDION_LAUNCHER_IDENTITY_IDLE_SECONDS": "3", "ACCORDION_RESYNC_SECONDS": "1"}
    with running_operator(cluster, tmp_path, env) as op:
        yield op


def identity(api: Api) -> list[dict[str, object] | None]:
    """The three objects (None where absent, or being deleted)."""
    out: list[dict[str, object] | None] = []
    for path in IDENTITY:
        r = api.http.get(path.format(ns=api.ns))
        if r.status_code == 404:
            out.append(None)
            continue
        assert r.status_code == 200, r.text
        body = r.json()
        out.append(None if body["metadata"].get("deletionTimestamp") else body)
    return out


def running(api: Api, name: str) -> bool:
    return api.status(name).get("phase") == "Running"


def test_one_identity_per_namespace_removed_when_idle(api: Api, quick_operator: Operator) -> None:
    api.secret()
    for name in ("a", "b"):
        api.create(run_body(name, nodeSelector=KWOK))
    poll(lambda: running(api, "a") and running(api, "b"), 30, "both runs to run")
    objs = identity(api)
    assert all(o is not None for o in objs), objs
    policy = api.http.get(
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/"
        "accordion-launcher-own-run"
    ).json()
    for o in objs:
        assert o is not None
        meta = o["metadata"]
        assert isinstance(meta, dict)
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "name": "accordion-launcher-own-run",
                "uid": policy["metadata"]["uid"],
            }
        ]
    for name in ("a", "b"):
        launcher = api.http.get(f"/api/v1/namespaces/{api.ns}/pods/{name}-launcher").json()
        assert launcher["spec"]["serviceAccountName"] == "accordion-launcher"
    api.delete("a")
    # one run is left: the identity stays past the idle time (3 s, passes every 1 s)
    time.sleep(5)
    assert all(o is not None for o in identity(api))
    api.delete("b")
    poll(lambda: identity(api) == [None, None, None], 30, "the idle identity to be removed")
    # ... and a new run brings it back before its launcher starts
    api.create(run_body("c", nodeSelector=KWOK))
    poll(lambda: running(api, "c"), 30, "run c to run")
    assert all(o is not None for o in identity(api))
    api.delete("c")
    poll(lambda: identity(api) == [None, None, None], 30, "the idle identity to be removed")
