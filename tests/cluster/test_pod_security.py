"""Child pods meet the `restricted` Pod Security Standard: in a namespace that enforces it (the
apiserver's PodSecurity admission), a run's launcher and workers are admitted and the run
finishes. Before, only fsGroup was set and such a namespace refused every pod."""

from __future__ import annotations

import pytest
from operator_support import Api, Operator

from accordion_dev.polling import poll
from accordion_dev.simulated_runs import finish_run, run_body

pytestmark = pytest.mark.cluster

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def test_a_run_succeeds_in_a_namespace_that_enforces_restricted(
    api: Api, operator: Operator
) -> None:
    r = api.http.patch(
        f"/api/v1/namespaces/{api.ns}",
        json={"metadata": {"labels": RESTRICTED}},
        headers={"content-type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    # the admission really enforces: a pod without the restricted settings is refused
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bare"},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    refused = api.http.post(f"/api/v1/namespaces/{api.ns}/pods", json=bare)
    assert refused.status_code == 403, refused.text
    assert "restricted" in refused.json()["message"]

    api.secret()
    created = api.create(run_body("locked", nodeSelector={"type": "kwok"}, lo=1, hi=2))
    assert created.status_code == 201, created.text
    poll(lambda: len(api.workers("locked")) == 2, 30, what="both workers admitted")
    finish_run(api.http, api.ns, "locked", [0.5, 0.9])
    poll(lambda: api.status("locked").get("phase") == "Succeeded", 30, what="the run succeeds")
    assert not [
        c for c in api.status("locked").get("conditions", []) if c.get("reason") == "CreateFailed"
    ]
