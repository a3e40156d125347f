"""The bystander check of the tenancy tests (issue 16), for any test file: whatever one tenant did
to its own namespace, a run of another tenant, in a fresh namespace of its own, is admitted and
progresses in its normal time.

    from tenancy_support import bystander_progresses

    def test_something_hostile(api: Api, operator: Operator, cluster: Cluster) -> None:
        ...  # the hostile or careless thing, left in place
        bystander_progresses(cluster)

The operator must be running (the `operator` fixture or one of your own); the cluster needs one
free GPU on a kwok node (`type=kwok`). The bystander's namespace is deleted afterwards without
waiting (the session's end checks that every `t-` namespace went).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import finish_run, run_body

TR = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns"
KWOK = {"type": "kwok"}

#: Seconds a one-worker run on a kwok node may take to be admitted (normally ~1 s here).
ADMIT_WITHIN = 10.0
#: Seconds from admission until it is Succeeded, its launcher Running and ended by `finish_run`.
FINISH_WITHIN = 20.0


@contextmanager
def tenant_namespace(cluster: Cluster, stem: str = "tenant") -> Iterator[str]:
    """A fresh namespace `t-<stem>-<hex>` with its default ServiceAccount and the credentials
    Secret `s3` that `run_body` names; deleted afterwards without waiting for its contents."""
    name = f"t-{stem[:40]}-{secrets.token_hex(3)}"
    with cluster.http() as http:
        r = http.post("/api/v1/namespaces", json={"metadata": {"name": name}})
        assert r.status_code == 201, r.text
        try:
            poll(
                lambda: (
                    http.get(f"/api/v1/namespaces/{name}/serviceaccounts/default").status_code
                    == 200
                ),
                30,
                f"default service account in {name}",
                every=0.1,
            )
            secret = {
                "metadata": {"name": "s3"},
                "stringData": {"accessKey": "a", "secretKey": "b"},
            }
            r = http.post(f"/api/v1/namespaces/{name}/secrets", json=secret)
            assert r.status_code == 201, r.text
            yield name
        finally:
            cluster.delete_namespace(name)


@dataclass(frozen=True)
class Progressed:
    """How long the bystander took: creation to Admitted=True, and to Succeeded."""

    namespace: str
    admitted_s: float
    succeeded_s: float


def admitted(http: httpx.Client, ns: str, run: str) -> bool:
    r = http.get(TR.format(ns=ns) + f"/{run}")
    conds = (r.json().get("status") or {}).get("conditions") or [] if r.status_code == 200 else []
    return any(c["type"] == "Admitted" and c["status"] == "True" for c in conds)


def bystander_progresses(
    cluster: Cluster, *, admit_within: float = ADMIT_WITHIN, finish_within: float = FINISH_WITHIN
) -> Progressed:
    """Assert that a one-worker run in a fresh namespace is admitted within `admit_within`
    seconds, then that its launcher runs and, played to its end by `finish_run`, the run is
    Succeeded within `finish_within` seconds more. Raises TimeoutError (naming the step) if not;
    returns the times taken."""
    with tenant_namespace(cluster, "bystander") as ns, cluster.http() as http:
        t0 = time.monotonic()
        r = http.post(TR.format(ns=ns), json=run_body("bystander", nodeSelector=KWOK))
        assert r.status_code == 201, r.text
        poll(
            lambda: admitted(http, ns, "bystander"),
            admit_within,
            f"the bystander run in {ns} to be admitted",
            every=0.1,
        )
        t_admitted = time.monotonic() - t0
        deadline = time.monotonic() + finish_within
        finish_run(http, ns, "bystander", [0.5], timeout=finish_within, every=0.1)

        def succeeded() -> bool:
            status = http.get(TR.format(ns=ns) + "/bystander").json().get("status") or {}
            return status.get("phase") == "Succeeded"

        poll(
            succeeded,
            max(deadline - time.monotonic(), 0.5),
            f"the bystander run in {ns} to succeed",
            every=0.1,
        )
        return Progressed(ns, round(t_admitted, 2), round(time.monotonic() - t0, 2))
