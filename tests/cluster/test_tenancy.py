"""Hostile or careless tenants on the real apiserver with the operator running (issue 16): what a
run counts as its own, and what one run's leftovers do to the next. More cases belong here."""

from __future__ import annotations

from typing import Any

import pytest
from operator_support import Api, Operator

from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body

pytestmark = pytest.mark.cluster
KWOK = {"type": "kwok"}


def own_pods(api: Api, run: str) -> list[dict[str, Any]]:
    """The run's pods whose controller is the run itself."""
    uid = api.get(run)["metadata"]["uid"]
    return [
        p
        for p in api.pods(f"accordion.dev/run={run}")
        if any(
            o.get("controller") and o["uid"] == uid
            for o in p["metadata"].get("ownerReferences", [])
        )
    ]


def test_orphaned_pods_of_a_deleted_run_do_not_block_its_successor(
    api: Api, operator: Operator
) -> None:
    """`kubectl delete tr r --cascade=orphan`, then apply r again: the old pods hold the names
    the new run needs (`r-launcher`, `r-worker-0`) and belong to nobody; they are removed and the
    new run gets pods of its own."""
    api.secret()
    assert api.create(run_body("r", nodeSelector=KWOK)).status_code == 201
    poll(lambda: len(own_pods(api, "r")) == 2, 30, what="the first run's launcher and worker")
    r = api.http.delete(
        api.collection.format(ns=api.ns) + "/r", params={"propagationPolicy": "Orphan"}
    )
    assert r.status_code in (200, 202), r.text
    poll(lambda: api.http.get(api.collection.format(ns=api.ns) + "/r").status_code == 404, 30)
    poll(
        lambda: all(
            not p["metadata"].get("ownerReferences") for p in api.pods("accordion.dev/run=r")
        ),
        30,
        what="the orphaned pods lose their owner",
    )
    assert len(api.pods("accordion.dev/run=r")) == 2
    assert api.create(run_body("r", nodeSelector=KWOK)).status_code == 201
    poll(lambda: len(own_pods(api, "r")) == 2, 60, what="the new run's own launcher and worker")
    poll(lambda: api.status("r").get("phase") == "Running", 30, what="the new run runs")


def test_a_lookalike_pod_is_not_counted_as_a_runs_launcher(api: Api, operator: Operator) -> None:
    """A tenant's pod labelled as a run's launcher does not stand in for it."""
    api.secret()
    fake = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "fake-launcher",
            "labels": {
                "accordion.dev/run": "l",
                "accordion.dev/role": "launcher",
                "app.kubernetes.io/managed-by": "accordion-operator",
            },
        },
        "spec": {"nodeSelector": KWOK, "containers": [{"name": "c", "image": "x"}]},
    }
    r = api.http.post(f"/api/v1/namespaces/{api.ns}/pods", json=fake)
    assert r.status_code == 201, r.text
    assert api.create(run_body("l", nodeSelector=KWOK)).status_code == 201
    poll(lambda: len(own_pods(api, "l")) == 2, 30, what="the run's own launcher and worker")
    poll(
        lambda: any(e["reason"] == "IgnoredPod" for e in api.events("l")),
        30,
        what="an IgnoredPod Event",
    )
    api.http.delete(f"/api/v1/namespaces/{api.ns}/pods/fake-launcher")
