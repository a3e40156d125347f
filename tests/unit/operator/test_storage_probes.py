"""The storage preflight's scheduling (trainingrun/storage.py) with a fake object store: answers
come in the background, are shared, re-asked with backoff, bounded per namespace, and a slow
tenant never delays another; then a whole controller pass with it. The listing itself against a
real MinIO is in tests/cluster/test_storage_preflight.py."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from typing import Any

import pytest
from test_controller_pass import Apiserver, node
from trainingrun_factory import make_run

from accordion_operator.api.trainingrun import REASON_BUCKET_NOT_FOUND, REASON_DATA_DENIED
from accordion_operator.config import Config
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller
from accordion_operator.trainingrun.observe import SecretInfo
from accordion_operator.trainingrun.preflight import Outcome, Probe, ProbeResult, probes_for
from accordion_operator.trainingrun.storage import PENDING, StoragePreflight

KEYS = frozenset({"accessKey", "secretKey"})
VALUES = {"accessKey": "AKIA-REAL-LOOKING", "secretKey": "very-secret-value-42"}


class Kube:
    async def secret_values(self, namespace: str, name: str) -> dict[str, str] | None:
        return dict(VALUES)


class Store:
    """A fake object store: an answer per bucket, the listings it served, and namespaces whose
    listings hang (a tarpit) until `release` is set."""

    def __init__(self) -> None:
        self.answers: dict[str, Outcome] = {}
        self.calls: Counter[str] = Counter()
        self.tarpits: set[str] = set()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.busy: Counter[str] = Counter()
        self.most_busy: Counter[str] = Counter()
        self.keys: list[tuple[str, str]] = []

    def __call__(self, probe: Probe, access: str, secret: str, timeout_s: float) -> ProbeResult:
        with self.lock:
            self.calls[probe.bucket] += 1
            self.keys.append((access, secret))
            self.busy[probe.namespace] += 1
            self.most_busy[probe.namespace] = max(
                self.most_busy[probe.namespace], self.busy[probe.namespace]
            )
        try:
            if probe.namespace in self.tarpits:
                self.release.wait(10)
            return ProbeResult(self.answers.get(probe.bucket, Outcome.OK), "code")
        finally:
            with self.lock:
                self.busy[probe.namespace] -= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def probes(namespace: str = "team-a", bucket: str = "results", rv: str = "1") -> tuple[Probe, ...]:
    run = make_run(metadata={"namespace": namespace}, spec={"results": {"bucket": bucket}})
    return probes_for(run, {"s3": SecretInfo(KEYS, rv)})


@pytest.fixture
async def preflight() -> Any:
    store, clock, woke = Store(), Clock(), asyncio.Event()
    pre = StoragePreflight(Kube(), woke.set, clock=clock, lister=store, timeout_s=1.0)  # type: ignore[arg-type]
    yield pre, store, clock, woke
    store.release.set()
    await pre.close()


async def answered(woke: asyncio.Event) -> None:
    await asyncio.wait_for(woke.wait(), 5)
    woke.clear()
    await asyncio.sleep(0)  # the task that woke us has finished


async def test_an_answer_comes_in_the_background_and_wakes_the_loop(preflight: Any) -> None:
    pre, store, clock, woke = preflight
    store.answers["results"] = Outcome.NO_BUCKET
    assert pre.verdict("u1", probes(), clock.now) is PENDING
    await answered(woke)
    verdict = pre.verdict("u1", probes(), clock.now)
    assert verdict is not PENDING
    assert verdict is not None
    assert verdict[0] == REASON_BUCKET_NOT_FOUND
    assert store.keys == [(VALUES["accessKey"], VALUES["secretKey"])]  # the Secret's own keys


async def test_one_listing_serves_a_thousand_runs(preflight: Any) -> None:
    pre, store, clock, woke = preflight
    wanted = probes()
    assert {pre.verdict(f"u{i}", wanted, clock.now) for i in range(1000)} == {PENDING}
    await answered(woke)
    assert {pre.verdict(f"u{i}", wanted, clock.now) for i in range(1000)} == {None}
    assert store.calls["results"] == 1


async def test_a_tarpit_namespace_holds_its_own_slots_only(preflight: Any) -> None:
    """A tenant whose endpoint never answers: its listings time out (inconclusive: its runs
    proceed), at most 2 of them at a time; another namespace's answer comes meanwhile."""
    pre, store, clock, woke = preflight
    store.tarpits.add("slow")
    for i in range(6):
        assert pre.verdict(f"s{i}", probes("slow", f"tarpit-{i}"), clock.now) is PENDING
    t0 = time.monotonic()
    assert pre.verdict("f", probes("fast"), clock.now) is PENDING
    await answered(woke)
    assert pre.verdict("f", probes("fast"), clock.now) is None
    assert time.monotonic() - t0 < 0.9  # not behind the tarpit's 1 s timeouts
    await asyncio.sleep(1.2)  # the first two slow listings timed out
    assert pre.verdict("s0", probes("slow", "tarpit-0"), clock.now) is None  # inconclusive
    assert store.most_busy["slow"] == 2  # the rest wait for the slots the hung threads hold


async def test_a_negative_answer_is_asked_again_with_backoff_until_it_passes(
    preflight: Any,
) -> None:
    pre, store, clock, woke = preflight
    store.answers["results"] = Outcome.NO_BUCKET
    pre.verdict("u1", probes(), clock.now)
    await answered(woke)
    assert pre.due_in(clock.now) == 10.0
    clock.now += 9
    assert pre.verdict("u1", probes(), clock.now)[0] == REASON_BUCKET_NOT_FOUND
    assert store.calls["results"] == 1  # not yet
    clock.now += 1
    # asked again; the known answer stands meanwhile (the status does not flap)
    assert pre.verdict("u1", probes(), clock.now)[0] == REASON_BUCKET_NOT_FOUND
    await answered(woke)
    assert store.calls["results"] == 2
    assert pre.due_in(clock.now) == 20.0  # doubled
    store.answers["results"] = Outcome.OK  # the bucket was created
    clock.now += 20
    pre.verdict("u1", probes(), clock.now)
    await answered(woke)
    assert pre.verdict("u1", probes(), clock.now) is None
    assert pre.due_in(clock.now) is None


async def test_a_passing_run_keeps_its_verdict_and_a_new_secret_is_listed_again(
    preflight: Any,
) -> None:
    pre, store, clock, woke = preflight
    pre.verdict("u1", probes(), clock.now)
    await answered(woke)
    assert pre.verdict("u1", probes(), clock.now) is None
    store.answers["results"] = Outcome.NO_BUCKET
    clock.now += 3600
    pre.sweep()
    assert pre.verdict("u1", probes(), clock.now) is None  # kept for the run's life
    assert store.calls["results"] == 1
    # the Secret changed (another resourceVersion): listed again before the run may start
    assert pre.verdict("u1", probes(rv="2"), clock.now) is PENDING
    await answered(woke)
    assert pre.verdict("u1", probes(rv="2"), clock.now)[0] == REASON_BUCKET_NOT_FOUND


async def test_secret_values_reach_no_message_and_no_log(
    preflight: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pre, store, clock, woke = preflight
    caplog.set_level(logging.DEBUG, logger="accordion")
    data = {"endpoint": "minio:9000", "bucket": "datasets", "credentialsSecret": {"name": "s3"}}
    wanted = probes_for(make_run(spec={"data": data}), {"s3": SecretInfo(KEYS, "1")})
    store.answers["datasets"] = Outcome.DENIED
    verdict = pre.verdict("u1", wanted, clock.now)
    # two listings (data, results) answer in threads: wait until both have, however their
    # wake-ups fall (two answers before one `answered` wake the loop only once)
    for _ in range(5):
        if verdict is not PENDING:
            break
        await answered(woke)
        verdict = pre.verdict("u1", wanted, clock.now)
    assert verdict is not PENDING
    assert verdict[0] == REASON_DATA_DENIED
    for value in VALUES.values():
        assert value not in verdict[1]
        assert value not in caplog.text


class StorageApiserver(Apiserver):
    async def secret_values(self, namespace: str, name: str) -> dict[str, str]:
        return dict(VALUES)


async def test_a_pass_leaves_a_pending_run_alone_and_admits_it_once_its_bucket_exists() -> None:
    cfg = Config()
    cache = ClusterCache(cfg)
    cache.apply("node", "ADDED", node("n1", 8))
    api = StorageApiserver(cache)
    store, woke = Store(), asyncio.Event()
    store.answers["results"] = Outcome.NO_BUCKET
    pre = StoragePreflight(api, woke.set, lister=store)  # type: ignore[arg-type]
    ctl = Controller(cfg, api, cache, storage=pre)  # type: ignore[arg-type]
    try:
        api.add_run("r", "2026-01-01T00:00:00Z")
        await ctl.reconcile_all()
        assert api.writes == []  # pending: no status, no pods, no Event
        await answered(woke)
        await ctl.reconcile_all()
        assert ("event BucketNotFound", "r") in api.writes
        adm = {c["type"]: c for c in api.runs["r"]["status"]["conditions"]}["Admitted"]
        assert (adm["status"], adm["reason"]) == ("False", REASON_BUCKET_NOT_FOUND)
        assert not [w for w in api.writes if w[0] == "create Pod"]
        # the bucket is created: the re-check (after the backoff) admits the run by itself
        store.answers["results"] = Outcome.OK
        api.writes.clear()
        ctl.clock = lambda: time.time() + 11
        await ctl.reconcile_all()
        await answered(woke)
        await ctl.reconcile_all()
        assert ("create Pod", "r") in api.writes
        assert api.writes.count(("event BucketNotFound", "r")) == 0  # one Event per problem
    finally:
        await pre.close()
