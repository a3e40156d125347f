"""Leader election's I/O (core/election.py) against an aiohttp stand-in for the apiserver's
Lease API (resourceVersion conflicts included), on an injected clock; and the fence that keeps a
past leader's controllers from writing (`Kube.may_write`). The real apiserver, two operator
processes and a SIGKILL are in tests/cluster/test_operator_ha.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standin_kube import standin_kube

from accordion_operator.config import Config
from accordion_operator.core.election import LeaderElector
from accordion_operator.core.kube import Kube, NotLeaderError
from accordion_operator.core.leader import Timing

T = Timing(lease_duration=10, renew_deadline=7, retry=2)
PATH = "/apis/coordination.k8s.io/v1/namespaces/ops/leases"


class LeaseServer:
    """One Lease, optimistic concurrency as the apiserver's; `hang` stalls every request;
    `writes` records (method, holder) of each accepted write."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.hang = False
        self.unhung = asyncio.Event()
        self.writes: list[tuple[str, str]] = []
        self.other: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        if self.hang:
            await self.unhung.wait()
        if not request.path.startswith(PATH):
            self.other.append(f"{request.method} {request.path}")
            return web.json_response({"kind": "Pod"}, status=201)
        if request.method == "GET":
            if self.lease is None:
                return web.json_response({"message": "not found"}, status=404)
            return web.json_response(self.lease)
        body = await request.json()
        if request.method == "POST" and self.lease is not None:
            return web.json_response({"message": "exists"}, status=409)
        if request.method == "PUT" and (
            self.lease is None
            or body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]
        ):
            return web.json_response({"message": "conflict"}, status=409)
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.lease = body
        self.writes.append((request.method, body["spec"]["holderIdentity"]))
        return web.json_response(body, status=201 if request.method == "POST" else 200)


@pytest.fixture
async def server() -> AsyncIterator[tuple[LeaseServer, str]]:
    state = LeaseServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    srv = TestServer(app)
    await srv.start_server()
    try:
        yield state, str(srv.make_url("")).rstrip("/")
    finally:
        await srv.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


_made: list[Kube] = []


def _kube(url: str) -> Kube:
    """A client closed after the test (`_close_clients`)."""
    made = standin_kube(url)
    _made.append(made)
    return made


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _made:
        await _made.pop().close()


def _elector(url: str, me: str, clock: Clock, timing: Timing = T) -> LeaderElector:
    return LeaderElector(_kube(url), "ops", "accordion", me, timing, clock=clock)


async def test_one_leader_then_a_takeover_only_after_the_lease_expired_on_the_standby_clock(
    server: tuple[LeaseServer, str],
) -> None:
    state, url = server
    clock = Clock()
    a, b = _elector(url, "a", clock), _elector(url, "b", clock)
    await a.attempt()
    assert a.leading()
    assert state.writes == [("POST", "a")]
    await b.attempt()
    assert not b.leading()
    for _ in range(5):  # a renews every 2 s: b never takes over
        clock.now += 2
        await a.attempt()
        await b.attempt()
        assert a.leading()
        assert not b.leading()
    # a dies (stops renewing). It stops acting 7 s after its last renewal was sent ...
    died = clock.now
    clock.now = died + 6.9
    assert a.leading()
    clock.now = died + 7.0
    assert not a.leading()
    # ... and b, which saw that renewal at `died`, takes over 10 s after it, not before
    clock.now = died + 9.9
    await b.attempt()
    assert not b.leading()
    clock.now = died + 10.0
    await b.attempt()
    assert b.leading()
    assert state.lease is not None
    assert state.lease["spec"]["holderIdentity"] == "b"
    assert state.lease["spec"]["leaseTransitions"] == 1
    # a comes back: it sees b's fresh Lease and stands by
    await a.attempt()
    assert not a.leading()
    assert b.terms == 1
    assert a.terms == 1


async def test_racing_candidates_one_wins_by_resource_version(
    server: tuple[LeaseServer, str],
) -> None:
    state, url = server
    clock = Clock()
    cands = [_elector(url, f"c{i}", clock) for i in range(5)]
    await asyncio.gather(*(c.attempt() for c in cands))
    assert sum(c.leading() for c in cands) == 1
    assert len(state.writes) == 1


async def test_a_leader_steps_down_by_its_deadline_when_the_apiserver_hangs(
    server: tuple[LeaseServer, str],
) -> None:
    """`hold` cuts each renewal off at the renew deadline: a hung apiserver cannot keep the
    leader acting past it."""
    state, url = server
    t = Timing(lease_duration=0.6, renew_deadline=0.4, retry=0.1)
    a = LeaderElector(_kube(url), "ops", "accordion", "a", t)
    try:
        assert await a.acquire(asyncio.Event())
        renewed = a.renewed_at
        assert renewed is not None
        state.hang = True
        await asyncio.wait_for(a.hold(asyncio.Event()), 2)
        assert not a.leading()
        assert time.monotonic() - renewed < t.renew_deadline + 0.15
    finally:
        state.hang = False
        state.unhung.set()


async def test_release_lets_a_standby_take_over_at_its_next_look(
    server: tuple[LeaseServer, str],
) -> None:
    state, url = server
    clock = Clock()
    a, b = _elector(url, "a", clock), _elector(url, "b", clock)
    await a.attempt()
    await b.attempt()
    await a.release()
    assert not a.leading()
    assert state.lease is not None
    assert state.lease["spec"]["holderIdentity"] == ""
    await b.attempt()  # no lease duration to wait
    assert b.leading()


async def test_the_fence_refuses_writes_past_the_deadline_before_sending_them(
    server: tuple[LeaseServer, str],
) -> None:
    state, url = server
    clock = Clock()
    a = _elector(url, "a", clock)
    controllers = _kube(url)
    controllers.may_write = a.leading
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
    with pytest.raises(NotLeaderError):
        await controllers.create(pod)  # standby: nothing sent
    assert state.other == []
    await a.attempt()
    code, _ = await controllers.create(pod)
    assert code == 201
    clock.now += T.renew_deadline
    with pytest.raises(NotLeaderError):
        await controllers.create(pod)
    assert state.other == ["POST /api/v1/namespaces/ns/pods"]
    # reads stay allowed (a standby's cache could be kept warm)
    code, _ = await controllers.request("GET", "v1", "pods/p", "ns")
    assert code == 201


class _Controllers:
    """What `handlers.start_controllers` returns, without a cluster: one idle loop."""

    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_a_term_starts_fresh_controllers_and_a_lost_lease_cancels_them(
    server: tuple[LeaseServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor runs controllers only while leading; after a step-down (the apiserver
    hung past the renew deadline) it stands by, and its next term builds new controllers (so
    caches from a fresh LIST) rather than resuming the old ones."""
    from accordion_operator import handlers
    from accordion_operator.metrics import OperatorMetrics

    state, url = server
    terms: list[handlers.Running] = []

    async def start(
        cfg: Config, metrics: OperatorMetrics, fence: Callable[[], bool] | None = None
    ) -> handlers.Running:
        running = handlers.Running(_Controllers(), asyncio.Event())  # type: ignore[arg-type]
        running.kube.may_write = fence
        task = asyncio.create_task(running.stop.wait())  # a loop that ends on stop
        running.loops.append((task, asyncio.Event()))
        terms.append(running)
        return running

    monkeypatch.setattr(handlers, "start_controllers", start)
    t = Timing(lease_duration=0.6, renew_deadline=0.4, retry=0.1)
    metrics = OperatorMetrics()
    elector = LeaderElector(_kube(url), "ops", "accordion", "a", t)
    sup = handlers.Supervisor(Config(), metrics, elector)
    sup.task = asyncio.create_task(sup.run())

    async def until(cond: Any, what: str) -> None:
        async with asyncio.timeout(3):
            while not cond():  # noqa: ASYNC110 (the supervisor has no event for these)
                await asyncio.sleep(0.02)

    await until(lambda: len(terms) == 1 and sup.running is not None, "first term")
    assert metrics.leader._value.get() == 1
    assert terms[0].kube.may_write is not None
    assert terms[0].kube.may_write()
    state.hang = True
    await until(lambda: sup.running is None, "step-down")
    assert terms[0].loops[0][0].cancelled()
    assert terms[0].kube.closed  # type: ignore[attr-defined]
    assert metrics.leader._value.get() == 0
    state.hang = False
    state.unhung.set()
    await until(lambda: len(terms) == 2 and sup.running is not None, "second term")
    assert terms[1] is not terms[0]
    await sup.shutdown()
    assert state.lease is not None
    assert state.lease["spec"]["holderIdentity"] == ""  # released on the way out


async def test_a_replica_that_may_not_create_the_lease_stands_by_until_it_exists(
    server: tuple[LeaseServer, str],
) -> None:
    """The chart creates the Lease with the release (create=False in its replicas): a replica
    still stopping after `helm uninstall` must not leave a new one behind."""
    state, url = server
    clock = Clock()
    a = LeaderElector(_kube(url), "ops", "accordion", "a", T, create=False, clock=clock)
    await a.attempt()
    assert not a.leading()
    assert state.writes == []
    assert state.lease is None
    # the release's empty Lease (`spec: {}`): nobody holds it, so a takes it at once
    state.rv += 1
    state.lease = {
        "metadata": {"name": "accordion", "resourceVersion": str(state.rv)},
        "spec": {},
    }
    await a.attempt()
    assert a.leading()
    assert state.writes == [("PUT", "a")]
