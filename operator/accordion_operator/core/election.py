"""Leader election, the I/O: read and write the operator's `coordination.k8s.io/v1` Lease.

The decisions (who may hold it, until when) are `core.leader`'s; this module makes the requests
and keeps the one fact the rest of the operator needs: `leading()`, true strictly before the
renew deadline of the last renewal that succeeded. `Kube.may_write` is that function for the
controllers' client, so a leader that missed its deadline sends no further write from any task,
even before `hold` returns and its controllers are stopped.

Why not a library: kopf has no leader election (its peering pauses kopf's own handlers, not
Accordion's controller loops); kubernetes_asyncio's `leaderelection` would bring a second
apiserver client (and its generated models) next to `core.kube` for three requests, and it
measures expiry on the wall clock of `renewTime` (skew between nodes shortens or lengthens a
lease). These ~150 lines follow client-go instead (see core/leader.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from accordion_operator.core.kube import ApiError, Kube
from accordion_operator.core.leader import (
    Action,
    LeaseRecord,
    Observation,
    Timing,
    decide,
    next_record,
    observe,
    released,
    still_leading,
)

log = logging.getLogger("accordion.leader")
LEASES = "coordination.k8s.io/v1"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class LeaderElector:
    """One candidate for the Lease `namespace/name`, as `me`."""

    kube: Kube
    namespace: str
    name: str
    me: str
    timing: Timing
    #: create the Lease when it is missing (the chart creates it with the release instead)
    create: bool = True
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = _now
    #: monotonic time our last successful write of the Lease was sent; None: not leading
    renewed_at: float | None = None
    #: the record last read and since when it has been unchanged (core.leader.observe)
    seen: Observation | None = None
    #: terms this process has begun
    terms: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def leading(self) -> bool:
        """Whether this process may act now (the fence)."""
        return self.renewed_at is not None and still_leading(
            self.renewed_at, self.clock(), self.timing
        )

    async def attempt(self) -> None:
        """One look at the Lease: read it, then create, take over or renew it when `decide`
        says so. Never raises for the apiserver's answers: a failed renewal only lets the
        deadline come closer."""
        try:
            await self._attempt()
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)

    async def _attempt(self) -> None:
        code, lease = await self.kube.request("GET", LEASES, f"leases/{self.name}", self.namespace)
        if code not in (200, 404):
            raise ApiError(code, f"GET lease: {code} {lease.get('message')}")
        record = LeaseRecord.from_lease(lease) if code == 200 else None
        now = self.clock()
        if record is not None:
            self.seen = observe(self.seen, record, now)
        action = decide(record, self.seen, self.me, now)
        if action is Action.WAIT:
            if self.renewed_at is not None:
                log.warning("lease %s/%s is held by %s now", self.namespace, self.name, record)
            self.renewed_at = None
            return
        if action is Action.CREATE and not self.create:
            # a replica still stopping after `helm uninstall` must not leave a new Lease behind
            log.warning(
                "lease %s/%s does not exist and is not created here (it comes with the chart's "
                "release; `helm upgrade` restores it): standing by",
                self.namespace,
                self.name,
            )
            self.renewed_at = None
            return
        new = next_record(record, action, self.me, self.timing, self.wall())
        body: dict[str, Any] = {
            "apiVersion": LEASES,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": new.spec(),
        }
        sent = self.clock()  # the apiserver writes it at this moment or later
        if action is Action.CREATE:
            code, answer = await self.kube.request("POST", LEASES, "leases", self.namespace, body)
        else:
            # optimistic concurrency: of two candidates, the second gets a 409
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            code, answer = await self.kube.request(
                "PUT", LEASES, f"leases/{self.name}", self.namespace, body
            )
        if code == 409:
            self.renewed_at = None  # someone else wrote it first; look again next time
            return
        if code not in (200, 201):
            raise ApiError(code, f"{action.value} lease: {code} {answer.get('message')}")
        if action is not Action.RENEW or self.renewed_at is None:
            self.terms += 1
            log.info(
                "lease %s/%s: %s is the leader now (%s, transitions %d)",
                self.namespace,
                self.name,
                self.me,
                action.value,
                new.transitions,
            )
        self.renewed_at = sent
        self.seen = observe(None, new, self.clock())

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Look at the Lease every retry period (with jitter, as client-go, so that standbys
        do not race in step) until this process leads (True) or `stop` is set (False)."""
        while not stop.is_set():
            # bounded: a request the apiserver never answers must not stall the candidate (one
            # that succeeded unseen shows as our own Lease at the next look, and is renewed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.attempt(), self.timing.renew_deadline)
            if self.leading():
                return True
            pause = self.timing.retry * self._rng.uniform(1.0, 1.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew every retry period; return when the renew deadline passed without a renewal
        (each attempt is cut off at the deadline, so a hung apiserver cannot hold us past it),
        when another holder took the Lease, or when `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._remaining(self.timing.retry))
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.attempt(), self._remaining(self.timing.retry))
            if not self.leading():
                log.warning(
                    "lease %s/%s: not renewed within %.1f s; stepping down",
                    self.namespace,
                    self.name,
                    self.timing.renew_deadline,
                )
                self.renewed_at = None
                return

    def _remaining(self, at_most: float) -> float:
        if self.renewed_at is None:
            return 0.0
        left = self.renewed_at + self.timing.renew_deadline - self.clock()
        return max(0.0, min(at_most, left))

    async def release(self) -> None:
        """Give the Lease up (after the controllers stopped): a standby takes over at its next
        look rather than a lease duration later. Best effort: a failure only delays it. Safe
        even past the renew deadline: the caller has stopped acting, and the write goes through
        only while the Lease still names us, unchanged (resourceVersion)."""
        if self.terms == 0:
            return
        self.renewed_at = None
        try:
            code, lease = await self.kube.request(
                "GET", LEASES, f"leases/{self.name}", self.namespace
            )
            if code != 200 or LeaseRecord.from_lease(lease).holder != self.me:
                return
            body = {
                "apiVersion": LEASES,
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "resourceVersion": lease["metadata"]["resourceVersion"],
                },
                "spec": released(LeaseRecord.from_lease(lease), self.timing, self.wall()).spec(),
            }
            code, answer = await self.kube.request(
                "PUT", LEASES, f"leases/{self.name}", self.namespace, body
            )
            if code == 200:
                log.info("lease %s/%s released", self.namespace, self.name)
            else:
                log.warning("releasing lease: %s %s", code, answer.get("message"))
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("releasing lease: %s", exc)
