"""Leader election, the decisions: who may hold the operator's Lease, and until when.

Pure (no I/O); `core.election` reads and writes the `coordination.k8s.io/v1` Lease and acts on
these decisions. The semantics are client-go's `tools/leaderelection`:

- The Lease names its holder (`holderIdentity`: pod name + a random suffix, unique per process),
  `leaseDurationSeconds`, `acquireTime`, `renewTime` and `leaseTransitions`.
- A candidate never trusts another process's clock: a Lease held by someone else counts as
  expired only when its record has not *changed* for `leaseDurationSeconds` of the candidate's
  own monotonic clock (from the moment the candidate observed the record), never by comparing
  `renewTime` with its wall clock.
- Every write is an update at the resourceVersion read (optimistic concurrency): of two
  candidates racing for an expired Lease, the apiserver lets exactly one through (409 for the
  other).
- The leader renews every `retry` seconds and stops acting when it has not renewed for
  `renew_deadline` seconds, counted from when it *sent* its last successful renewal (the
  apiserver wrote it at that moment or later). Since `renew_deadline < lease_duration`, and a
  candidate waits `lease_duration` from an observation made after that write, the old leader
  has stopped before anyone else may start: the margin `lease_duration - renew_deadline` covers
  the writes already on the wire.
"""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Timing:
    """The three durations of an election, in seconds (config: ACCORDION_LEADER_*)."""

    lease_duration: float
    renew_deadline: float
    retry: float

    def problems(self) -> list[str]:
        """Why these durations cannot make a safe election (empty: they can)."""
        out = []
        if not 0 < self.retry < self.renew_deadline:
            out.append("the retry period must be positive and below the renew deadline")
        if not self.renew_deadline < self.lease_duration:
            out.append("the renew deadline must be below the lease duration")
        if self.lease_duration < 1:
            out.append("the lease duration must be at least 1 s (leaseDurationSeconds)")
        return out

    def worst_takeover(self) -> float:
        """Seconds from a leader's death to a standby holding the Lease, at worst: the standby
        observes the leader's last renewal up to one retry late, waits a lease duration from
        that observation, and tries again up to one retry after it expired."""
        return self.lease_duration + 2 * self.retry


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease's spec says (`holder` "" when nobody holds it)."""

    holder: str = ""
    lease_duration_seconds: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time:
            out["acquireTime"] = self.acquire_time
        if self.renew_time:
            out["renewTime"] = self.renew_time
        return out


class Action(enum.Enum):
    #: no Lease yet: create it, held by us
    CREATE = "create"
    #: the Lease is free or expired: update it to us (a new term, transitions + 1)
    TAKE_OVER = "take-over"
    #: we hold it: update renewTime
    RENEW = "renew"
    #: someone else holds it and it has not expired: wait and look again
    WAIT = "wait"


@dataclass(frozen=True)
class Observation:
    """A candidate's memory of the Lease: the record last read and when (its monotonic clock)
    that record was first seen unchanged."""

    record: LeaseRecord
    since: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The observation after reading `record` at `now`: the clock restarts only when the record
    changed (a renewal changes renewTime), so a dead holder's Lease ages on our clock alone."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide(record: LeaseRecord | None, seen: Observation | None, me: str, now: float) -> Action:
    """What a candidate `me` does with the Lease it just read (None: there is none)."""
    if record is None:
        return Action.CREATE
    if record.holder == me:
        return Action.RENEW
    if not record.holder:
        return Action.TAKE_OVER  # released by a leader that shut down cleanly
    if seen is None or seen.record != record:
        return Action.WAIT  # first seen just now: its lease starts on our clock now
    expired = now - seen.since >= max(record.lease_duration_seconds, 1)
    return Action.TAKE_OVER if expired else Action.WAIT


def next_record(
    record: LeaseRecord | None, action: Action, me: str, timing: Timing, wall: datetime
) -> LeaseRecord:
    """The record a CREATE, TAKE_OVER or RENEW writes."""
    stamp = microtime(wall)
    # whole seconds, rounded up: a standby waits what is written, never less than configured
    duration = max(1, math.ceil(timing.lease_duration))
    if action is Action.RENEW and record is not None:
        return LeaseRecord(me, duration, record.acquire_time or stamp, stamp, record.transitions)
    # a new term: client-go counts every change of holder, a released Lease's included
    transitions = 0 if record is None else record.transitions + 1
    return LeaseRecord(me, duration, stamp, stamp, transitions)


def released(record: LeaseRecord, timing: Timing, wall: datetime) -> LeaseRecord:
    """What a leader that shuts down cleanly writes (client-go's ReleaseOnCancel): no holder, so
    a standby takes over at its next look instead of after a lease duration."""
    return LeaseRecord("", 1, record.acquire_time, microtime(wall), record.transitions)


def still_leading(last_renew_sent: float, now: float, timing: Timing) -> bool:
    """Whether a leader whose last successful renewal was sent at `last_renew_sent` (monotonic)
    may still act: strictly before its renew deadline."""
    return now - last_renew_sent < timing.renew_deadline


def identity(pod_name: str) -> str:
    """A holder identity unique per process: the pod name (what an admin reads in the Lease)
    plus a random suffix, so that a restarted container never mistakes its predecessor's
    Lease for its own."""
    return f"{pod_name or 'accordion-operator'}_{secrets.token_hex(4)}"


def microtime(t: datetime) -> str:
    """A `metav1.MicroTime` (RFC 3339 with microseconds, UTC)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
