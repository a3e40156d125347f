"""High availability (issue 19, part 3): two operator replicas against the real apiserver, one
Lease; the leader is SIGKILLed while it creates the pods of 28 runs, and the standby takes over.

What is asserted, precisely:
- while both replicas live, only the leader reconciles: the standby has run no controller pass
  (its `accordion_reconcile_duration_seconds_count` is 0) and logged no term;
- after the SIGKILL the standby leads within 15 s (measured from the kill to its
  `accordion_operator_leader` gauge reading 1; printed), on short test timings (lease 3 s,
  renew deadline 2 s, retry 0.5 s: at worst 4 s; ACCORDION_TEST_HA_DEFAULT_TIMINGS=1 runs it on
  the production defaults, at worst 14 s);
- every run converges (benchmarks/operator_chaos.observe: as many runs admitted as there are
  GPUs, each with exactly one launcher and one worker pod, no orphan, conditions everywhere);
  so no run has a duplicated pod;
- no Event is duplicated: the four runs whose credentials Secret is missing get exactly one
  Warning Event each (reason and message), although the kill may land between their status
  write and their Event. The operator posts an Event only after writing the status transition it
  reports, and decides it from the transition, so a new leader never re-posts one its predecessor
  posted; a predecessor killed between the two loses that Event (at most one per run, not seen
  here because such runs are few). So: no (run, reason, message) twice, and each bad run's
  Warning present once;
- a clean shutdown (SIGTERM) releases the Lease: the restarted replica leads again within 2 s.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from node_pools import kwok_gpu_pool
from operator_support import Operator
from tenancy_support import tenant_namespace

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import run_body
from accordion_operator.core.objects import MANAGED_BY
from benchmarks.operator_chaos import converge

pytestmark = pytest.mark.cluster

TR = "/apis/accordion.dev/v1alpha1/namespaces/{ns}/trainingruns"
NODES, GPUS_PER_NODE = 2, 8
GOOD_RUNS, BAD_RUNS = 24, 4
TAKEOVER_LIMIT_S = 15.0


@pytest.fixture
def ha_nodes(cluster: Cluster) -> Iterator[dict[str, str]]:
    with kwok_gpu_pool(cluster, "ha", NODES, GPUS_PER_NODE) as selector:
        yield selector


def _metric(op: Operator, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=2).text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert m is not None, name
    return float(m.group(1))


def _leads(op: Operator) -> bool:
    try:
        return _metric(op, "accordion_operator_leader") == 1.0
    except httpx.HTTPError:
        return False


def _passes(op: Operator) -> float:
    return _metric(op, 'accordion_reconcile_duration_seconds_count{handler="trainingruns"}')


def test_standby_takes_over_after_the_leader_is_sigkilled_mid_pass(
    cluster: Cluster, trainingrun_crd: str, ha_nodes: dict[str, str], tmp_path: Path
) -> None:
    lease = f"accordion-ha-{secrets.token_hex(3)}"
    env = {
        "ACCORDION_LEADER_LEASE_NAME": lease,
        "ACCORDION_LEADER_LEASE_NAMESPACE": "default",
        "ACCORDION_LEADER_LEASE_SECONDS": "3",
        "ACCORDION_LEADER_RENEW_DEADLINE_SECONDS": "2",
        "ACCORDION_LEADER_RETRY_SECONDS": "0.5",
        # few writes at once, so that the 64 writes of the first pass take a while: the kill
        # lands while the leader is creating pods and writing status
        "ACCORDION_MAX_CONCURRENT_REQUESTS": "2",
    }
    if os.environ.get("ACCORDION_TEST_HA_DEFAULT_TIMINGS"):
        # measure the production defaults (lease 10 s, renew deadline 7 s, retry 2 s) instead
        for key in ("LEASE_SECONDS", "RENEW_DEADLINE_SECONDS", "RETRY_SECONDS"):
            del env[f"ACCORDION_LEADER_{key}"]
    t0 = time.monotonic()

    def phase(what: str) -> None:
        print(f"[ha] {time.monotonic() - t0:5.1f} s {what}", flush=True)

    a = Operator(cluster, tmp_path / "a", env)
    b = Operator(cluster, tmp_path / "b", env)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    http = cluster.http()
    try:
        a.start()
        poll(lambda: _leads(a), 15, "replica a to lead", every=0.1)
        b.start()
        phase("two replicas up, a leads")
        with tenant_namespace(cluster, "ha-a") as ns1, tenant_namespace(cluster, "ha-b") as ns2:
            namespaces = [ns1, ns2]
            for i in range(GOOD_RUNS):
                body = run_body(f"r{i:02d}", nodeSelector=dict(ha_nodes))
                http.post(TR.format(ns=namespaces[i % 2]), json=body).raise_for_status()
            for i in range(BAD_RUNS):
                body = run_body(f"bad{i}", nodeSelector=dict(ha_nodes))
                body["spec"]["results"]["credentialsSecret"] = {"name": "missing"}
                http.post(TR.format(ns=namespaces[i % 2]), json=body).raise_for_status()

            def pods() -> int:
                return sum(
                    len(http.get(f"/api/v1/namespaces/{ns}/pods").json()["items"])
                    for ns in namespaces
                )

            phase("runs created")
            at_kill = poll(pods, 30, "the leader's first pods", every=0.02)
            # only the leader has reconciled; then kill it while it is acting
            assert _passes(b) == 0, b.tail()
            assert _passes(a) >= 1
            a.kill()
            killed = time.monotonic()
            poll(lambda: _leads(b), TAKEOVER_LIMIT_S, "replica b to take over", every=0.05)
            takeover = time.monotonic() - killed
            phase(f"leader SIGKILLed at {at_kill} of 32 pods; b led {takeover:.2f} s later")
            assert takeover < TAKEOVER_LIMIT_S
            log_b = b.log.read_text()
            assert "standby until it holds lease" in log_b
            assert log_b.count("leading (term") == 1, log_b[-3000:]

            seen = converge(cluster, NODES * GPUS_PER_NODE, 60, namespaces, log=lambda _: None)
            assert not seen["problems"], (seen, b.tail())
            phase("converged")
            assert seen["runs"] == GOOD_RUNS + BAD_RUNS
            assert seen["admitted"] == NODES * GPUS_PER_NODE

            def warnings() -> Counter[tuple[str, str, str]]:
                out: Counter[tuple[str, str, str]] = Counter()
                for ns in namespaces:
                    for e in http.get(f"/api/v1/namespaces/{ns}/events").json()["items"]:
                        if e.get("reportingComponent") == MANAGED_BY:
                            out[(e["involvedObject"]["name"], e["reason"], e["message"])] += 1
                return out

            events = poll(
                lambda: (
                    (w := warnings())
                    and {n for n, _, _ in w} >= {f"bad{i}" for i in range(BAD_RUNS)}
                    and w
                ),
                15,
                "a Warning Event on each run with a missing Secret",
            )
            duplicated = {k: n for k, n in events.items() if n > 1}
            assert duplicated == {}, duplicated
            phase(f"events: {sorted(n for n, _, _ in events)}, none duplicated")

            # a clean shutdown releases the Lease: the other replica leads at its next look
            a.start()
            assert not _leads(a)
            stopped = time.monotonic()
            b.stop()
            poll(lambda: _leads(a), 5, "replica a to lead after b's SIGTERM", every=0.05)
            handover = time.monotonic() - stopped
            phase(f"handover after SIGTERM: {handover:.2f} s (b's shutdown included)")
            assert seen == converge(cluster, NODES * GPUS_PER_NODE, 30, namespaces, log=print)
        phase("namespaces deleted")
    finally:
        a.stop()
        b.stop()
        http.delete(f"/apis/coordination.k8s.io/v1/namespaces/default/leases/{lease}")
        http.close()
