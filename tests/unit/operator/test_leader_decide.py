"""Leader election's decisions (core/leader.py), pure: client-go's semantics on a given clock."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from accordion_operator.config import Config
from accordion_operator.core.leader import (
    Action,
    LeaseRecord,
    Timing,
    decide,
    identity,
    microtime,
    next_record,
    observe,
    released,
    still_leading,
)

T = Timing(lease_duration=10, renew_deadline=7, retry=2)
WALL = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
OTHER = LeaseRecord("other_1", 10, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z", 3)


def test_no_lease_is_created_and_our_own_is_renewed() -> None:
    assert decide(None, None, "me", 0.0) is Action.CREATE
    mine = LeaseRecord("me", 10, "a", "b", 0)
    assert decide(mine, observe(None, mine, 0.0), "me", 100.0) is Action.RENEW


def test_a_held_lease_expires_on_our_clock_from_when_we_first_saw_it_unchanged() -> None:
    """renewTime is years old here: it does not matter, only how long we watched it not move
    (no trust in another node's clock)."""
    seen = observe(None, OTHER, 50.0)
    assert decide(OTHER, seen, "me", 50.0) is Action.WAIT
    assert decide(OTHER, observe(seen, OTHER, 59.9), "me", 59.9) is Action.WAIT
    assert decide(OTHER, observe(seen, OTHER, 60.0), "me", 60.0) is Action.TAKE_OVER


def test_a_renewal_restarts_the_wait() -> None:
    seen = observe(None, OTHER, 0.0)
    renewed = LeaseRecord(OTHER.holder, 10, OTHER.acquire_time, "2026-01-01T00:00:02.000000Z", 3)
    seen = observe(seen, renewed, 9.0)
    assert seen.since == 9.0
    assert decide(renewed, seen, "me", 18.9) is Action.WAIT
    assert decide(renewed, seen, "me", 19.0) is Action.TAKE_OVER


def test_a_released_lease_is_taken_at_once() -> None:
    free = released(OTHER, T, WALL)
    assert free.holder == ""
    assert decide(free, observe(None, free, 0.0), "me", 0.0) is Action.TAKE_OVER


def test_records_written() -> None:
    created = next_record(None, Action.CREATE, "me", T, WALL)
    assert created == LeaseRecord(
        "me", 10, "2026-01-02T03:04:05.678901Z", "2026-01-02T03:04:05.678901Z", 0
    )
    taken = next_record(OTHER, Action.TAKE_OVER, "me", T, WALL)
    assert (taken.holder, taken.transitions, taken.acquire_time) == ("me", 4, microtime(WALL))
    later = datetime(2026, 1, 2, 3, 4, 7, tzinfo=UTC)
    renewed = next_record(taken, Action.RENEW, "me", T, later)
    assert renewed.acquire_time == taken.acquire_time  # same term
    assert renewed.renew_time == "2026-01-02T03:04:07.000000Z"
    assert renewed.transitions == 4
    assert LeaseRecord.from_lease({"spec": renewed.spec()}) == renewed
    assert created.spec()["leaseDurationSeconds"] == 10


def test_identity_names_the_pod_and_differs_per_process() -> None:
    a, b = (
        identity("acc-accordion-operator-7d9f-abcde"),
        identity("acc-accordion-operator-7d9f-abcde"),
    )
    assert a.startswith("acc-accordion-operator-7d9f-abcde_")
    assert a != b


def test_timing_rules_and_the_default_takeover_bound() -> None:
    assert T.problems() == []
    assert Timing(10, 10, 2).problems() == ["the renew deadline must be below the lease duration"]
    assert Timing(10, 7, 7).problems()
    assert Timing(0.5, 0.2, 0.1).problems()
    cfg = Config()
    default = Timing(
        cfg.leader_lease_seconds, cfg.leader_renew_deadline_seconds, cfg.leader_retry_seconds
    )
    assert default.problems() == []
    assert default.worst_takeover() <= 15.0  # issue 19: a standby leads within 15 s
    assert still_leading(100.0, 106.9, default)
    assert not still_leading(100.0, 107.0, default)


@given(
    lease=st.floats(1, 60),
    deadline_share=st.floats(0.05, 0.95),
    retry_share=st.floats(0.05, 0.95),
    write_delay=st.floats(0, 5),
    observe_delay=st.floats(0, 5),
)
def test_the_old_leader_has_stopped_before_anyone_may_take_over(
    lease: float,
    deadline_share: float,
    retry_share: float,
    write_delay: float,
    observe_delay: float,
) -> None:
    """The leader sends its last successful renewal at s; the apiserver writes it at
    w = s + write_delay; a standby sees it at o = w + observe_delay. The leader acts until
    s + renew_deadline; the standby may take over from o + lease on: strictly later, whatever
    the delays, by at least lease - renew_deadline."""
    t = Timing(lease, lease * deadline_share, lease * deadline_share * retry_share)
    assert t.problems() == []
    s = 1000.0
    record = next_record(None, Action.CREATE, "old", t, WALL)
    assert record.lease_duration_seconds >= lease  # rounded up, never down
    seen = observe(None, record, s + write_delay + observe_delay)
    first_takeover = seen.since + record.lease_duration_seconds
    assert decide(record, seen, "me", first_takeover - 1e-3) is Action.WAIT
    assert decide(record, seen, "me", first_takeover + 1e-3) is Action.TAKE_OVER
    last_act = s + t.renew_deadline
    assert still_leading(s, last_act - 1e-3, t)
    assert not still_leading(s, last_act + 1e-3, t)
    assert first_takeover - last_act >= lease - t.renew_deadline - 1e-9 > 0
