"""Hostile or careless tenants on the real apiserver with the operator running (issue 16).

`CASES` is the table: each case does its hostile or careless thing in a namespace of its own and
checks the outcome it expects; then, with whatever it did still in place, a run in another fresh
namespace must be admitted and progress in its normal time (`tenancy_support.bystander_progresses`),
the operator must still be alive, and its TrainingRun watch must not have started re-listing
(one bad object used to wedge it for the whole cluster). One operator serves the whole table.

More cases (priority classes, storage preflight, split Secrets, a worker that left the Horovod
world) belong in files of their own, calling `bystander_progresses` the same way.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from operator_support import Api, Operator, run_pods, running_operator
from tenancy_support import KWOK, bystander_progresses, tenant_namespace

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll
from accordion_dev.simulated_runs import MERGE, finish_run, results_path, run_body

pytestmark = pytest.mark.cluster

#: The status timestamps of a TrainingRun (api/trainingrun.py, `TrainingRunStatus`), all
#: `format: date-time` in the CRD; `training.updatedAt` and the conditions' `lastTransitionTime`
#: (no format: any string of up to 64 characters) are written separately.
STATUS_TIMESTAMPS = (
    "admittedTime",
    "startTime",
    "completionTime",
    "lastScaleTime",
    "belowMinSince",
    "launcherFailedTime",
)


# --- the harness ---------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a case works with: the cluster, the shared operator and a client for its namespace."""

    cluster: Cluster
    op: Operator
    api: Api
    #: what the case leaves to clean up after it (extra namespaces)
    stack: ExitStack
    #: state a case hands from `act` to `after`
    data: dict[str, Any] = field(default_factory=dict)

    def extra_namespace(self, stem: str) -> str:
        """Another fresh namespace (with the `s3` Secret), deleted after the case."""
        return self.stack.enter_context(tenant_namespace(self.cluster, stem))


@dataclass(frozen=True)
class Case:
    id: str
    #: what the tenant does
    setup: str
    #: what must happen
    expected: str
    #: does the setup and checks what can be checked at once
    act: Callable[[Ctx], None]
    #: checks after the bystander ran (time for the operator to act on the case meanwhile)
    after: Callable[[Ctx], None] | None = None
    marks: tuple[pytest.MarkDecorator, ...] = ()


@pytest.fixture(scope="module")
def shared_operator(
    cluster: Cluster, trainingrun_crd: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """One operator for the whole table (starting one per case would cost ~2 s each)."""
    with running_operator(cluster, tmp_path_factory.mktemp("tenancy-operator")) as op:
        yield op


@pytest.fixture
def tenant_api(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Api]:
    """A client for a fresh namespace of the case (with the `s3` Secret); the namespace is
    deleted afterwards without waiting (the next case does not need its GPUs back at once)."""
    stem = "".join(ch if ch.isalnum() else "-" for ch in request.node.callspec.id.lower())
    with tenant_namespace(cluster, "tc-" + stem[:30].strip("-")) as ns:
        api = Api(cluster, ns)
        try:
            yield api
        finally:
            api.close()


def relists(op: Operator, since: int) -> list[str]:
    """The operator's log lines since byte `since` that say its TrainingRun watch re-lists."""
    with op.log.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [ln for ln in text.splitlines() if "watch trainingruns" in ln and "re-listing" in ln]


class NotRederivedError(AssertionError):
    """An operator-owned status field kept what someone else wrote into it."""


class SurplusPinnedError(AssertionError):
    """A run kept surplus workers that the allocator's fairness should have moved."""


# --- helpers of the cases ------------------------------------------------------------------------


def tr_path(api: Api, name: str = "", ns: str | None = None) -> str:
    base = api.collection.format(ns=ns or api.ns)
    return f"{base}/{name}" if name else base


def create(api: Api, body: dict[str, Any], ns: str | None = None) -> dict[str, Any]:
    r = api.http.post(tr_path(api, ns=ns), json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def get(api: Api, name: str, ns: str | None = None) -> dict[str, Any]:
    r = api.http.get(tr_path(api, name, ns))
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def status_of(api: Api, name: str, ns: str | None = None) -> dict[str, Any]:
    return get(api, name, ns).get("status") or {}


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def patch_status(api: Api, name: str, status: dict[str, Any]) -> httpx.Response:
    return api.http.patch(tr_path(api, name) + "/status", json={"status": status}, headers=MERGE)


def own_pods(api: Api, run: str, ns: str | None = None) -> list[dict[str, Any]]:
    """The run's pods whose controller is the run itself."""
    uid = get(api, run, ns)["metadata"]["uid"]
    return [
        p
        for p in api.pods(f"accordion.dev/run={run}", ns=ns or api.ns)
        if any(
            o.get("controller") and o["uid"] == uid
            for o in p["metadata"].get("ownerReferences", [])
        )
    ]


def start(api: Api, name: str, ns: str | None = None, **spec: Any) -> dict[str, Any]:
    """Create a run on kwok nodes and wait until it is Running; returns the object."""
    create(api, run_body(name, nodeSelector=KWOK, **spec), ns)
    poll(
        lambda: status_of(api, name, ns).get("phase") == "Running",
        20,
        f"run {name} to run",
        every=0.1,
    )
    return get(api, name, ns)


def running_as_before(api: Api, name: str, workers: int = 1) -> None:
    """The run still runs with its one launcher and `workers` Horovod hosts, nothing more (the
    launcher may itself host worker 0, docs/trainingrun.md)."""
    st = status_of(api, name)
    assert st.get("phase") == "Running", st
    labels = [p["metadata"]["labels"] for p in own_pods(api, name)]
    roles = sorted(lb["accordion.dev/role"] for lb in labels)
    assert roles.count("launcher") == 1, roles
    assert set(roles) <= {"launcher", "worker"}, roles
    # every worker pod carries an index; the indices are the hosts 0..workers-1, once each
    hosts = sorted(
        int(lb["accordion.dev/worker-index"]) for lb in labels if "accordion.dev/worker-index" in lb
    )
    assert hosts == list(range(workers)), labels
    assert len(hosts) >= roles.count("worker"), labels


def finishes(api: Api, name: str) -> dict[str, Any]:
    """Play the run to its end; it must be Succeeded. Returns its status."""
    finish_run(api.http, api.ns, name, [0.5, 0.75], every=0.1)
    poll(
        lambda: status_of(api, name).get("phase") == "Succeeded",
        20,
        f"run {name} to succeed",
        every=0.1,
    )
    return status_of(api, name)


def events(api: Api, name: str, reason: str, ns: str | None = None) -> list[dict[str, Any]]:
    r = api.http.get(
        f"/api/v1/namespaces/{ns or api.ns}/events",
        params={"fieldSelector": f"involvedObject.name={name}"},
    )
    r.raise_for_status()
    return [e for e in r.json()["items"] if e.get("reason") == reason]


def pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A tenant's own bare pod on a kwok node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeSelector": KWOK,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "x"}],
        },
    }


# --- bad timestamps ------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


#: Every form of a timestamp the apiserver's `date-time` check accepts that a strict parser may
#: refuse or misread (probed: a leap second, 30 February, 24:00, a space or no offset are refused
#: with 422). The forms of now are real instants; the others are unusable or absurd.
TIMESTAMP_FORMS: dict[str, Callable[[], str]] = {
    "year-zero": lambda: "0000-01-01T00:00:00Z",
    "lowercase-z": lambda: _now().strftime("%Y-%m-%dT%H:%M:%Sz"),
    "lowercase-t": lambda: _now().strftime("%Y-%m-%dt%H:%M:%SZ"),
    "nanoseconds": lambda: _now().strftime("%Y-%m-%dT%H:%M:%S.123456789Z"),
    "utc-offset": lambda: _now().strftime("%Y-%m-%dT%H:%M:%S+00:00"),
    "other-offset": lambda: (
        _now().astimezone(timezone(timedelta(hours=-7))).strftime("%Y-%m-%dT%H:%M:%S-07:00")
    ),
    "offset-24h": lambda: _now().strftime("%Y-%m-%dT%H:%M:%S+24:00"),
    "far-future": lambda: "9999-12-31T23:59:59Z",
}


def forged_timestamps(form: str) -> Case:
    def act(ctx: Ctx) -> None:
        api = ctx.api
        start(api, "ts")
        stamp = TIMESTAMP_FORMS[form]()
        st = status_of(api, "ts")
        forged = {
            **{f: stamp for f in STATUS_TIMESTAMPS},
            "training": {"epoch": 1, "updatedAt": stamp},
            "conditions": [{**c, "lastTransitionTime": stamp} for c in st["conditions"]],
        }
        r = patch_status(api, "ts", forged)
        assert r.status_code == 200, r.text  # the apiserver takes it: the operator must cope
        # what the apiserver stored (a read after it would race the operator's next pass)
        st = r.json()["status"]
        assert all(st[f] == stamp for f in STATUS_TIMESTAMPS), st
        ctx.data["resultsURI"] = st["resultsURI"]

    def after(ctx: Ctx) -> None:
        running_as_before(ctx.api, "ts")
        st = finishes(ctx.api, "ts")
        assert st["resultsURI"] == ctx.data["resultsURI"]

    return Case(
        f"timestamp-{form}",
        f"a running run's launcher writes `{TIMESTAMP_FORMS[form]()}` into every status timestamp "
        "(admittedTime, startTime, completionTime, lastScaleTime, belowMinSince, "
        "launcherFailedTime, training.updatedAt, every condition's lastTransitionTime)",
        "accepted by the apiserver; the watch does not re-list, the run keeps its two pods and, "
        "ended by its launcher, is Succeeded",
        act,
        after,
    )


def garbage_transition_time(ctx: Ctx) -> None:
    api = ctx.api
    start(api, "ltt")
    st = status_of(api, "ltt")
    conds = [{**c, "lastTransitionTime": "garbage"} for c in st["conditions"]]
    r = patch_status(api, "ltt", {"conditions": conds})
    assert r.status_code == 200, r.text


def garbage_transition_time_after(ctx: Ctx) -> None:
    running_as_before(ctx.api, "ltt")
    finishes(ctx.api, "ltt")


# --- the allocator's bookkeeping -----------------------------------------------------------------


def kwok_gpus(http: httpx.Client) -> tuple[int, int]:
    """(GPUs of the kwok nodes, of which requested by pods that hold them)."""
    nodes = http.get("/api/v1/nodes", params={"labelSelector": "type=kwok"}).json()["items"]
    names = {n["metadata"]["name"] for n in nodes}
    total = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", 0)) for n in nodes)
    used = 0
    for p in http.get("/api/v1/pods").json()["items"]:
        if p["spec"].get("nodeName") not in names or p["status"].get("phase") in (
            "Succeeded",
            "Failed",
        ):
            continue
        for c in p["spec"]["containers"]:
            used += int(((c.get("resources") or {}).get("requests") or {}).get("nvidia.com/gpu", 0))
    return total, used


def big_run(ctx: Ctx) -> int:
    """Once every kwok GPU is free (earlier cases' namespaces go in the background), start run
    `big` (min 1, max all of them) and wait until it holds them all; returns how many."""
    api = ctx.api
    total, _ = kwok_gpus(api.http)
    poll(lambda: kwok_gpus(api.http)[1] == 0, 60, "every kwok GPU free", every=0.2)
    start(api, "big", hi=total)
    poll(lambda: status_of(api, "big").get("currentWorkers") == total, 20, "big to hold all")
    return total


def fair_share(api: Api) -> bool:
    """The newcomer has as many workers as the big run, give or take one."""
    big, new = status_of(api, "big"), status_of(api, "new")
    return int(new.get("desiredWorkers", 0)) >= max(int(big.get("desiredWorkers", 0)) - 1, 2)


def forged_future_last_scale(ctx: Ctx) -> None:
    api = ctx.api
    total = big_run(ctx)
    r = patch_status(api, "big", {"lastScaleTime": "9999-12-31T23:59:59Z"})
    assert r.status_code == 200, r.text
    create(api, run_body("new", nodeSelector=KWOK, hi=total))
    # the test operator's cooldown is 5 s; a pinned surplus would keep `new` at 1 worker
    poll(lambda: fair_share(api), 15, "the newcomer's fair share of the surplus", every=0.2)


def refreshed_last_scale(ctx: Ctx) -> None:
    api = ctx.api
    total = big_run(ctx)
    stop = threading.Event()

    def forge() -> None:  # the launcher keeps saying "just rescaled"
        with ctx.cluster.http() as http:
            while not stop.is_set():
                now = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
                http.patch(
                    tr_path(api, "big") + "/status",
                    json={"status": {"lastScaleTime": now}},
                    headers=MERGE,
                )
                stop.wait(0.5)

    forger = threading.Thread(target=forge, daemon=True)
    forger.start()
    try:
        create(api, run_body("new", nodeSelector=KWOK, hi=total))
        try:
            poll(lambda: fair_share(api), 12, "the newcomer's fair share", every=0.2)
        except TimeoutError as e:
            raise SurplusPinnedError(str(e)) from None
    finally:
        stop.set()
        forger.join(5)


# --- children: lookalikes, orphans, names --------------------------------------------------------


def lookalike_launcher(ctx: Ctx) -> None:
    api = ctx.api
    labels = {
        "accordion.dev/run": "l",
        "accordion.dev/role": "launcher",
        "app.kubernetes.io/managed-by": "accordion-operator",
    }
    r = api.http.post(f"/api/v1/namespaces/{api.ns}/pods", json=pod("fake-launcher", labels))
    assert r.status_code == 201, r.text
    create(api, run_body("l", nodeSelector=KWOK))
    poll(lambda: len(own_pods(api, "l")) == run_pods(1), 20, "the run's own launcher and worker")
    poll(lambda: events(api, "l", "IgnoredPod"), 20, "an IgnoredPod Event")


def lookalike_worker(ctx: Ctx) -> None:
    api = ctx.api
    start(api, "w")
    labels = {
        "accordion.dev/run": "w",
        "accordion.dev/role": "worker",
        "accordion.dev/worker-index": "1",
        "app.kubernetes.io/managed-by": "accordion-operator",
    }
    r = api.http.post(f"/api/v1/namespaces/{api.ns}/pods", json=pod("w-worker-1", labels))
    assert r.status_code == 201, r.text
    poll(lambda: events(api, "w", "IgnoredPod"), 20, "an IgnoredPod Event")


def lookalike_worker_after(ctx: Ctx) -> None:
    api = ctx.api
    running_as_before(api, "w")
    st = status_of(api, "w")
    assert st.get("currentWorkers") == 1, st
    assert st.get("desiredWorkers") == 1, st
    assert len(events(api, "w", "IgnoredPod")) == 1  # once per pod, not per pass


def orphans_then_reapply(ctx: Ctx) -> None:
    api = ctx.api
    create(api, run_body("r", nodeSelector=KWOK))
    poll(lambda: len(own_pods(api, "r")) == run_pods(1), 20, "the first run's launcher and worker")
    r = api.http.delete(tr_path(api, "r"), params={"propagationPolicy": "Orphan"})
    assert r.status_code in (200, 202), r.text
    poll(lambda: api.http.get(tr_path(api, "r")).status_code == 404, 20, "r deleted")
    poll(
        lambda: all(
            not p["metadata"].get("ownerReferences") for p in api.pods("accordion.dev/run=r")
        ),
        20,
        "the orphaned pods lose their owner",
    )
    assert len(api.pods("accordion.dev/run=r")) == run_pods(1)
    create(api, run_body("r", nodeSelector=KWOK))
    poll(
        lambda: len(own_pods(api, "r")) == run_pods(1), 30, "the new run's own launcher and worker"
    )
    poll(lambda: status_of(api, "r").get("phase") == "Running", 20, "the new run runs")


def name_squatter(ctx: Ctx) -> None:
    api = ctx.api
    r = api.http.post(f"/api/v1/namespaces/{api.ns}/pods", json=pod("sq-launcher"))
    assert r.status_code == 201, r.text
    create(api, run_body("sq", nodeSelector=KWOK))

    def refused() -> bool:
        c = cond(status_of(api, "sq"), "Running")
        return c.get("reason") == "PodCreationFailed" and "sq-launcher" in c.get("message", "")

    poll(refused, 20, "Running=False PodCreationFailed naming the squatted pod")


def name_squatter_after(ctx: Ctx) -> None:
    api = ctx.api
    assert api.http.get(f"/api/v1/namespaces/{api.ns}/pods/sq-launcher").status_code == 200
    assert len(events(api, "sq", "CreateFailed")) == 1  # one Event per distinct refusal


# --- results paths -------------------------------------------------------------------------------


def results_uri(api: Api, name: str, ns: str | None = None) -> str:
    def uri() -> str:
        return str(status_of(api, name, ns).get("resultsURI") or "")

    found = poll(uri, 20, f"status.resultsURI of {name}", every=0.1)
    obj = get(api, name, ns)
    assert found == f"s3://results/{results_path(obj)}", (found, obj["metadata"])
    return found


def launcher_results_path(api: Api, name: str, ns: str | None = None) -> str:
    def env() -> str:
        r = api.http.get(f"/api/v1/namespaces/{ns or api.ns}/pods/{name}-launcher")
        if r.status_code != 200:
            return ""
        envs = r.json()["spec"]["containers"][0]["env"]
        return next((e.get("value", "") for e in envs if e["name"] == "ACCORDION_RESULTS_PATH"), "")

    return poll(env, 20, f"{name}-launcher's ACCORDION_RESULTS_PATH", every=0.1)


def same_name_two_namespaces(ctx: Ctx) -> None:
    api = ctx.api
    other = ctx.extra_namespace("same-name-b")
    for ns in (api.ns, other):
        create(api, run_body("same", nodeSelector=KWOK), ns)
    a, b = results_uri(api, "same"), results_uri(api, "same", other)
    assert a != b
    assert f"/{api.ns}/same-" in a
    assert f"/{other}/same-" in b
    for ns, uri in ((api.ns, a), (other, b)):
        assert uri == "s3://results/" + launcher_results_path(api, "same", ns)


def delete_then_reapply(ctx: Ctx) -> None:
    api = ctx.api
    create(api, run_body("again", nodeSelector=KWOK))
    first = results_uri(api, "again")
    api.delete("again")
    poll(lambda: api.http.get(tr_path(api, "again")).status_code == 404, 30, "again deleted")
    create(api, run_body("again", nodeSelector=KWOK))
    second = results_uri(api, "again")
    assert first != second
    assert first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0]  # only the uid digits differ
    assert second == "s3://results/" + launcher_results_path(api, "again")


def ttl_then_reapply(ctx: Ctx) -> None:
    api = ctx.api
    start(api, "ttl", ttlSecondsAfterFinished=0)
    first = results_uri(api, "ttl")
    finish_run(api.http, api.ns, "ttl", [0.5], every=0.1)
    poll(lambda: api.http.get(tr_path(api, "ttl")).status_code == 404, 30, "ttl deleted by TTL")
    create(api, run_body("ttl", nodeSelector=KWOK))
    second = results_uri(api, "ttl")
    assert first != second


# --- Pod Security --------------------------------------------------------------------------------

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def restricted_namespace(ctx: Ctx) -> None:
    api = ctx.api
    r = api.http.patch(
        f"/api/v1/namespaces/{api.ns}", json={"metadata": {"labels": RESTRICTED}}, headers=MERGE
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
    create(api, run_body("locked", nodeSelector=KWOK, lo=1, hi=2))
    poll(lambda: len(api.workers("locked")) == 2, 20, "both workers admitted")
    finishes(api, "locked")
    assert not events(api, "locked", "CreateFailed")


# --- what the run's launcher writes --------------------------------------------------------------


def launcher_token(ctx: Ctx, run: str, bound: bool = True) -> str:
    """A token of the launchers' ServiceAccount bound to the run's launcher pod, what the user's
    own image holds (or, not `bound`, to no pod)."""
    api = ctx.api
    spec: dict[str, Any] = {}
    if bound:
        name = f"{run}-launcher"
        found = poll(
            lambda: api.http.get(f"/api/v1/namespaces/{api.ns}/pods/{name}").json().get("metadata"),
            20,
            f"pod {name}",
        )
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": name,
            "uid": found["uid"],
        }
    r = api.http.post(
        f"/api/v1/namespaces/{api.ns}/serviceaccounts/accordion-launcher/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
    )
    assert r.status_code == 201, r.text
    token: str = r.json()["status"]["token"]
    return token


def as_launcher(ctx: Ctx, run: str, bound: bool = True) -> httpx.Client:
    """A client that is the run's launcher."""
    return httpx.Client(
        base_url=ctx.cluster.server,
        verify=ssl.create_default_context(cafile=str(ctx.cluster.pki / "ca.crt")),
        headers={"Authorization": f"Bearer {launcher_token(ctx, run, bound)}"},
        timeout=30,
    )


def nan_metrics(ctx: Ctx) -> None:
    api = ctx.api
    start(api, "nan")
    with as_launcher(ctx, "nan") as http:
        url = tr_path(api, "nan") + "/status"
        for raw in ("NaN", "Infinity", "-Infinity", "1e999"):
            body = '{"status": {"training": {"epoch": 1, "metrics": {"loss": ' + raw + "}}}}"
            r = http.patch(url, content=body, headers=MERGE)
            assert r.status_code == 400, (raw, r.status_code, r.text)
        r = http.patch(
            url, json={"status": {"training": {"metrics": {"loss": "NaN"}}}}, headers=MERGE
        )
        assert r.status_code == 422, r.text
        assert "training.metrics.loss" in r.text, r.text
        assert not (status_of(api, "nan").get("training") or {}).get("metrics")
        # and the next finite report goes through: progress does not stop
        r = http.patch(
            url,
            json={"status": {"training": {"epoch": 1, "metrics": {"loss": 0.5}}}},
            headers=MERGE,
        )
        assert r.status_code == 200, r.text


def nan_metrics_after(ctx: Ctx) -> None:
    running_as_before(ctx.api, "nan")
    finishes(ctx.api, "nan")


def launcher_token_scope(ctx: Ctx) -> None:
    api = ctx.api
    start(api, "me")
    create(api, run_body("victim", nodeSelector=KWOK))
    with as_launcher(ctx, "me") as http:
        own = tr_path(api, "me")
        ok = http.patch(own + "/status", json={"status": {"training": {"epoch": 1}}}, headers=MERGE)
        assert ok.status_code == 200, ok.text
        denied = {
            "another run's status": http.patch(
                tr_path(api, "victim") + "/status",
                json={"status": {"phase": "Failed"}},
                headers=MERGE,
            ),
            "its own spec": http.patch(own, json={"spec": {"workers": {"max": 32}}}, headers=MERGE),
            "a pod": http.post(f"/api/v1/namespaces/{api.ns}/pods", json=pod("x")),
            "a run": http.post(tr_path(api), json=run_body("mine", nodeSelector=KWOK)),
            "a Secret": http.get(f"/api/v1/namespaces/{api.ns}/secrets/s3"),
            "runs of another namespace": http.get("/apis/accordion.dev/v1alpha1/trainingruns"),
        }
        for what, r in denied.items():
            assert r.status_code == 403, (what, r.status_code, r.text)
        assert "own run only" in denied["another run's status"].text  # the admission policy
        # what it may do: read its namespace's pods (host discovery)
        assert http.get(f"/api/v1/namespaces/{api.ns}/pods").status_code == 200
    # The namespace's launchers share one ServiceAccount and Role: the admission policy keeps
    # each to the run of the pod its token is bound to.
    poll(lambda: status_of(api, "victim").get("phase") == "Running", 20, "run victim to run")
    # (above: bound to another run's launcher pod; here: bound to no pod at all. The apiserver
    # binds the ServiceAccount's tokens only to pods that run as it: the launchers.)
    with as_launcher(ctx, "victim", bound=False) as http:
        r = http.patch(
            tr_path(api, "victim") + "/status",
            json={"status": {"phase": "Failed"}},
            headers=MERGE,
        )
        assert r.status_code == 403, (r.status_code, r.text)
        assert "own run only" in r.text, r.text
    with as_launcher(ctx, "victim") as http:  # its own launcher's token: allowed
        r = http.patch(
            tr_path(api, "victim") + "/status",
            json={"status": {"training": {"epoch": 1}}},
            headers=MERGE,
        )
        assert r.status_code == 200, r.text


#: Status fields the operator derives, with what the run's launcher forges into them.
FORGED_STATUS: dict[str, Any] = {
    "resultsURI": "s3://someone-elses/bucket/",
    "desiredWorkers": 9,
    "currentWorkers": 9,
    "readyWorkers": 9,
    "gpus": 9,
    "workerSummary": "9/9",
    "observedGeneration": 99,
}


def forge_status(ctx: Ctx, run: str, forged: dict[str, Any]) -> dict[str, Any]:
    """Start `run`, then overwrite `forged` in its status with its launcher's token; returns
    what those fields said before."""
    api = ctx.api
    start(api, run)
    poll(lambda: status_of(api, run).get("readyWorkers") == 1, 20, f"{run}'s worker ready")
    st = status_of(api, run)
    before = {k: st.get(k) for k in forged}
    with as_launcher(ctx, run) as http:
        r = http.patch(tr_path(api, run) + "/status", json={"status": forged}, headers=MERGE)
    assert r.status_code == 200, r.text
    return before


def rederived(ctx: Ctx, run: str, before: dict[str, Any]) -> None:
    api = ctx.api

    def same() -> bool:
        now = status_of(api, run)
        return {k: now.get(k) for k in before} == before

    try:
        poll(same, 8, "the operator's status fields re-derived", every=0.2)
    except TimeoutError:
        now = status_of(api, run)
        raise NotRederivedError((before, {k: now.get(k) for k in before})) from None
    running_as_before(api, run)


def operator_owned_status(ctx: Ctx) -> None:
    rederived(ctx, "owned", forge_status(ctx, "owned", FORGED_STATUS))


def operator_owned_status_after(ctx: Ctx) -> None:
    running_as_before(ctx.api, "owned")
    finishes(ctx.api, "owned")


def forged_phase(ctx: Ctx) -> None:
    rederived(ctx, "ph", forge_status(ctx, "ph", {"phase": "Succeeded"}))


# --- input checks --------------------------------------------------------------------------------


def early_shrink(ctx: Ctx) -> None:
    """`kubectl scale` down right after the workers came up, before the launcher published
    `status.training.rank0Pod`: the highest index goes, worker 0 (rank 0 in index-ordered host
    discovery) stays (issue 16, item 8)."""
    api = ctx.api
    create(api, run_body("early", nodeSelector=KWOK, lo=1, hi=3))
    poll(lambda: len(own_pods(api, "early")) == run_pods(3), 20, "3 workers", every=0.1)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in own_pods(api, "early")}
    assert "rank0Pod" not in (status_of(api, "early").get("training") or {})
    r = api.http.patch(
        tr_path(api, "early"), json={"spec": {"workers": {"replicas": 1}}}, headers=MERGE
    )
    assert r.status_code == 200, r.text
    poll(lambda: len(own_pods(api, "early")) == run_pods(1), 20, "one worker", every=0.1)
    after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in own_pods(api, "early")}
    # the launcher and worker 0 (a pod of its own, or the launcher itself) stay, unchanged
    assert after == {k: v for k, v in before.items() if k in ("early-launcher", "early-worker-0")}


def control_characters(ctx: Ctx) -> None:
    api = ctx.api
    bad: list[tuple[str, dict[str, Any]]] = [
        ("spec.image", {"image": "trainer\x00:1"}),
        ("spec.results.prefix", {"results": {"bucket": "results", "prefix": "a\x00b"}}),
        ("spec.results.bucket", {"results": {"bucket": "res\nults"}}),
        ("spec.results.endpoint", {"results": {"bucket": "results", "endpoint": "minio\x1b:9000"}}),
        ("spec.nodeSelector", {"nodeSelector": {"type": "kwok\x7f"}}),
        ("spec.model.path", {"model": {"path": "/models/m\x00.keras"}}),
    ]
    for fieldname, spec in bad:
        body = run_body("ctl", nodeSelector=KWOK)
        for k, v in spec.items():
            if isinstance(v, dict) and isinstance(body["spec"].get(k), dict):
                body["spec"][k] = {**body["spec"][k], **v}
            else:
                body["spec"][k] = v
        r = api.http.post(tr_path(api), json=body)
        assert r.status_code == 422, (fieldname, r.status_code, r.text)
        assert fieldname in r.json()["message"], (fieldname, r.json()["message"])


def dot_segments(ctx: Ctx) -> None:
    api = ctx.api
    for fieldname, store, prefix in (
        ("spec.results.prefix", "results", "runs/../other-team"),
        ("spec.results.prefix", "results", "./x"),
        ("spec.results.prefix", "results", ".."),
        ("spec.data.prefix", "data", "data/../../x"),
    ):
        body = run_body("dots", nodeSelector=KWOK)
        base = body["spec"]["results"]
        body["spec"][store] = {**base, "prefix": prefix}
        r = api.http.post(tr_path(api), json=body)
        assert r.status_code == 422, (prefix, r.status_code, r.text)
        assert fieldname in r.json()["message"], (prefix, r.json()["message"])


def bad_learning_rates(ctx: Ctx) -> None:
    api = ctx.api
    hps: dict[str, dict[str, Any]] = {
        "lr-negative": {"learning_rate": -1},
        "lr-zero": {"learning_rate": 0},
        "lr-string-zero": {"lr": "0"},
        "lr-word": {"learning_rate": "fast"},
        "optimizer": {"optimizer": "adamw"},
    }
    for name, hp in hps.items():
        create(api, run_body(name, nodeSelector=KWOK, hyperparameters=hp))
    for name, hp in hps.items():

        def refused(name: str = name) -> dict[str, Any]:
            return cond(status_of(api, name), "Admitted")

        c = poll(refused, 20, f"{name} decided", every=0.1)
        assert c["status"] == "False", (name, c)
        assert c["reason"] == "InvalidHyperparameters", (name, c)
        assert next(iter(hp)) in c["message"], (name, c)
        assert not api.pods(f"accordion.dev/run={name}")


# --- size and load -------------------------------------------------------------------------------


def huge_runs(ctx: Ctx) -> None:
    api = ctx.api
    # 64 (maxProperties) of 1024 characters (the longest string value the operator accepts)
    hps = {f"h{i:02d}": "x" * 1024 for i in range(64)}
    for i in range(3):
        body = run_body(
            f"huge-{i}",
            nodeSelector=KWOK,
            hyperparameters=hps,
            image="registry.example/" + "i" * 480,
        )
        create(api, body)
    for i in range(3):

        def admitted(name: str = f"huge-{i}") -> bool:
            return cond(status_of(api, name), "Admitted").get("status") == "True"

        try:
            poll(admitted, 20, f"huge-{i} admitted", every=0.1)
        except TimeoutError:
            raise AssertionError(status_of(api, f"huge-{i}")) from None


def many_runs(ctx: Ctx) -> None:
    """A namespace that floods the queue: 40 runs whose minimum (5 workers of 8 GPUs) no free
    GPUs of the kwok nodes can hold."""
    api = ctx.api
    for i in range(40):
        create(api, run_body(f"flood-{i:02d}", nodeSelector=KWOK, lo=5, hi=5, gpus=8))


def many_runs_after(ctx: Ctx) -> None:
    api = ctx.api
    for i in range(40):
        c = cond(status_of(api, f"flood-{i:02d}"), "Admitted")
        assert c.get("status") == "False", c
        assert c["reason"] in ("WaitingForGPUs", "NoMatchingNodes"), c
    assert not api.pods()


# --- failures ------------------------------------------------------------------------------------


def quota_refuses_pods(ctx: Ctx) -> None:
    api = ctx.api
    quota = {"metadata": {"name": "tiny"}, "spec": {"hard": {"requests.cpu": "1m"}}}
    r = api.http.post(f"/api/v1/namespaces/{api.ns}/resourcequotas", json=quota)
    assert r.status_code == 201, r.text
    poll(
        lambda: (
            api.http.get(f"/api/v1/namespaces/{api.ns}/resourcequotas/tiny")
            .json()
            .get("status", {})
            .get("hard")
        ),
        20,
        "the quota to be in force",
        every=0.1,
    )
    create(api, run_body("q", nodeSelector=KWOK))

    def refused() -> dict[str, Any]:
        c = cond(status_of(api, "q"), "Running")
        return c if c.get("reason") == "PodCreationFailed" else {}

    c = poll(refused, 20, "Running=False PodCreationFailed", every=0.1)
    assert "exceeded quota" in c["message"] or "forbidden" in c["message"], c


def quota_refuses_pods_after(ctx: Ctx) -> None:
    api = ctx.api
    assert not api.pods("accordion.dev/run=q")
    # backoff: a few Events for the whole time, not one per pass (passes come every 2 s)
    evs = events(api, "q", "CreateFailed")
    assert 1 <= len(evs) <= 2, [e["message"] for e in evs]
    assert all(e.get("count", 1) == 1 for e in evs), evs


def progress_stall(ctx: Ctx) -> None:
    api = ctx.api
    start(api, "stall", progressDeadlineSeconds=2)

    def failed() -> dict[str, Any]:
        c = cond(status_of(api, "stall"), "Failed")
        return c if c.get("status") == "True" else {}

    c = poll(failed, 30, "the stalled run to fail", every=0.2)
    assert c["reason"] == "Stalled", c
    st = status_of(api, "stall")
    assert st["phase"] == "Failed", st
    assert st.get("stallRestarts") == 1, st
    assert events(api, "stall", "Stalled")  # the restart's Warning


# --- the table -----------------------------------------------------------------------------------

CASES: list[Case] = [
    *(forged_timestamps(form) for form in TIMESTAMP_FORMS),
    Case(
        "timestamp-garbage-transition-time",
        "a running run's launcher writes `garbage` into every condition's lastTransitionTime "
        "(no date-time format there)",
        "the watch does not re-list; the run keeps its pods and is Succeeded when it ends",
        garbage_transition_time,
        garbage_transition_time_after,
    ),
    Case(
        "forged-future-last-scale-time",
        "a run holding every kwok GPU (min 1, max all) forges status.lastScaleTime 9999-12-31; "
        "another such run arrives",
        "the newcomer gets its fair share of the surplus within the 5 s cooldown (+ slack)",
        forged_future_last_scale,
    ),
    Case(
        "refreshed-last-scale-time",
        "as above, but the big run's launcher writes lastScaleTime = now every 0.5 s",
        "the newcomer still gets its fair share after a normal cooldown",
        refreshed_last_scale,
    ),
    Case(
        "lookalike-launcher",
        "a tenant pod `fake-launcher` carries run l's labels (launcher role) before l exists",
        "l gets its own launcher and worker; one IgnoredPod Event",
        lookalike_launcher,
    ),
    Case(
        "lookalike-worker",
        "a tenant pod `w-worker-1` carries running run w's worker labels (index 1)",
        "IgnoredPod once; w still counts one worker (currentWorkers 1) and runs unchanged",
        lookalike_worker,
        lookalike_worker_after,
    ),
    Case(
        "orphans-then-reapply",
        "`kubectl delete tr r --cascade=orphan`, then apply r again",
        "the orphans holding r's pod names are removed; the new r gets its own pods and runs",
        orphans_then_reapply,
    ),
    Case(
        "name-squatter",
        "a tenant pod without any labels is named `sq-launcher` before run sq is applied",
        "Running=False PodCreationFailed naming the pod; the pod is left alone; one CreateFailed "
        "Event (backoff)",
        name_squatter,
        name_squatter_after,
    ),
    Case(
        "same-name-two-namespaces",
        "run `same` applied in two namespaces",
        "two different status.resultsURI, each `<prefix>/<namespace>/same-<uid digits>`, and "
        "each launcher's ACCORDION_RESULTS_PATH the same as its run's",
        same_name_two_namespaces,
    ),
    Case(
        "delete-then-reapply",
        "run `again` applied, deleted, applied again",
        "a new results folder (new uid digits)",
        delete_then_reapply,
    ),
    Case(
        "ttl-then-reapply",
        "run `ttl` with ttlSecondsAfterFinished 0 succeeds, is deleted by its TTL, applied again",
        "a new results folder (new uid digits)",
        ttl_then_reapply,
    ),
    Case(
        "restricted-namespace",
        "the namespace enforces the `restricted` Pod Security Standard",
        "a bare pod is refused; the run's launcher and 2 workers are admitted and it succeeds "
        "without CreateFailed",
        restricted_namespace,
    ),
    Case(
        "nan-metrics",
        'the run\'s launcher (its own token) reports NaN, Infinity, -Infinity, 1e999, "NaN" as '
        "a metric",
        "400 (not JSON) or 422 (not a number); status.training unchanged; the next finite "
        "report is accepted; the run runs on and succeeds",
        nan_metrics,
        nan_metrics_after,
    ),
    Case(
        "launcher-token-scope",
        "the run's launcher token tries another run's status, its own spec, pods, runs, Secrets, "
        "runs cluster-wide",
        "403 for each; its own status and the namespace's pods (read) are allowed",
        launcher_token_scope,
    ),
    Case(
        "operator-owned-status",
        "the run's launcher (its own token) overwrites resultsURI, desired/current/readyWorkers, "
        "gpus, workerSummary, observedGeneration",
        "each re-derived within 10 s; the run keeps its pods and succeeds",
        operator_owned_status,
        operator_owned_status_after,
    ),
    Case(
        "forged-phase",
        "the run's launcher (its own token) writes status.phase Succeeded while it runs",
        "phase re-derived (Running), the run keeps its pods",
        forged_phase,
    ),
    Case(
        "control-characters",
        "NUL, newline, ESC or DEL in image, results prefix/bucket/endpoint, a nodeSelector "
        "value, model.path",
        "422 naming the field",
        control_characters,
    ),
    Case(
        "dot-segments",
        "`..` or `.` segments in results.prefix or data.prefix",
        "422 naming the field",
        dot_segments,
    ),
    Case(
        "bad-hyperparameters",
        'learning_rate -1, 0, lr "0", learning_rate "fast", optimizer adamw',
        "Admitted=False InvalidHyperparameters naming the parameter; no pods",
        bad_learning_rates,
    ),
    Case(
        "shrink-in-the-first-seconds",
        "a 3-worker run is scaled to 1 before its launcher reported rank 0",
        "workers 2 and 1 go, worker 0 (rank 0) and the launcher stay the same pods",
        early_shrink,
    ),
    Case(
        "huge-runs",
        "3 runs with 64 hyperparameters of 1024 characters each and a 497-character image",
        "each admitted within 20 s; the bystander in its normal time",
        huge_runs,
    ),
    Case(
        "queue-flood",
        "40 runs in one namespace whose minimum (5 x 8 GPUs) can never fit the kwok nodes",
        "each Admitted=False (WaitingForGPUs or NoMatchingNodes), no pods; the bystander in its "
        "normal time",
        many_runs,
        many_runs_after,
    ),
    Case(
        "quota-refuses-pods",
        "a ResourceQuota `requests.cpu: 1m` in the namespace refuses every child pod",
        "Running=False PodCreationFailed with the apiserver's message; no pods; 1-2 CreateFailed "
        "Events in all (backoff)",
        quota_refuses_pods,
        quota_refuses_pods_after,
    ),
    Case(
        "progress-stall",
        "a running run (progressDeadlineSeconds 2) never reports progress",
        "a Stalled Warning and one launcher restart, then Failed with reason Stalled",
        progress_stall,
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_tenant_case(
    case: Case, cluster: Cluster, shared_operator: Operator, tenant_api: Api
) -> None:
    op = shared_operator
    since = op.log.stat().st_size
    with ExitStack() as stack:
        ctx = Ctx(cluster, op, tenant_api, stack)
        case.act(ctx)
        took = bystander_progresses(cluster)
        print(
            f"[tenancy] {case.id}: bystander admitted in {took.admitted_s} s, "
            f"succeeded in {took.succeeded_s} s"
        )
        if case.after is not None:
            case.after(ctx)
        assert op.alive(), op.tail()
        assert not relists(op, since), relists(op, since)[:3]


def test_table_is_large_enough() -> None:
    """Issue 16's acceptance: at least 20 hostile or careless cases."""
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


def test_deleted_namespaces_lose_their_pods(cluster: Cluster) -> None:
    """Last: no pod is left in a namespace being deleted (the cases' and the bystanders', deleted
    without waiting), so their GPUs are free again for the tests after this file."""
    with cluster.http() as http:

        def gone() -> bool:
            doomed = {
                n["metadata"]["name"]
                for n in http.get("/api/v1/namespaces").json()["items"]
                if n["metadata"].get("deletionTimestamp")
            }
            pods = http.get("/api/v1/pods").json()["items"]
            return not [p for p in pods if p["metadata"]["namespace"] in doomed]

        poll(gone, 120, "the pods of deleted namespaces to be gone")
