"""RFC 3339 timestamps (core/timefmt.py): every form the apiserver's `date-time` lets into a
status parses to the right instant, and anything unusable reads as absent instead of raising,
in `from_rfc3339` itself and in what reads a run's status timestamps (the TrainingRun cache and
`decide_run`), since a run's launcher token may write its run's status."""

from __future__ import annotations

import calendar
from typing import Any

import pytest
from merge_patch import merge
from trainingrun_factory import launcher, make_body, worker

from accordion_operator.api.trainingrun import TrainingRun
from accordion_operator.config import Config
from accordion_operator.core.timefmt import from_rfc3339, to_rfc3339
from accordion_operator.trainingrun.allocator import Grant
from accordion_operator.trainingrun.cache import CachedRun
from accordion_operator.trainingrun.decide import decide_run
from accordion_operator.trainingrun.observe import Children, PodState, pod_state

NOW = 1_800_000_000.0
CFG = Config(launcher_backoff_seconds=10, launcher_backoff_max_seconds=60)
#: 2026-01-02T03:04:05Z
T0 = calendar.timegm((2026, 1, 2, 3, 4, 5))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", T0),
        ("2026-01-02t03:04:05z", T0),  # RFC 3339 5.6: T and Z may be lower case
        ("2026-01-02 03:04:05Z", T0),  # RFC 3339 5.6: a space may separate date and time
        (" 2026-01-02T03:04:05Z\n", T0),
        ("2026-01-02T05:04:05+02:00", T0),
        ("2026-01-01T21:34:05-05:30", T0),
        ("2026-01-02T03:04:05+00:00", T0),
        ("2026-01-02T03:04:05-00:00", T0),  # RFC 3339 4.3: UTC, local offset unknown
        ("2026-01-02T03:04:05.5Z", T0 + 0.5),
        ("2026-01-02T03:04:05.000001Z", T0 + 1e-6),
        ("2026-01-02T03:04:05.123456789Z", T0 + 0.123456789),  # what Go writes: nanoseconds
        ("2026-01-02T03:04:05.1234567891Z", T0 + 0.1234567891),  # more digits than a nanosecond
        ("2016-12-31T23:59:60Z", calendar.timegm((2017, 1, 1, 0, 0, 0))),  # leap second
        ("2016-12-31T23:59:60.5Z", calendar.timegm((2017, 1, 1, 0, 0, 0)) + 0.5),
        ("2024-02-29T00:00:00Z", calendar.timegm((2024, 2, 29, 0, 0, 0))),
        ("1970-01-01T00:00:00Z", 0.0),
        ("1969-12-31T23:59:59Z", -1.0),
        ("0001-01-01T00:00:00Z", calendar.timegm((1, 1, 1, 0, 0, 0))),
        ("9999-12-31T23:59:59Z", calendar.timegm((9999, 12, 31, 23, 59, 59))),
        ("9999-12-31T23:59:59-01:00", calendar.timegm((9999, 12, 31, 23, 59, 59)) + 3600),
        ("2026-01-02T03:04:05-23:59", T0 + 23 * 3600 + 59 * 60),
    ],
)
def test_every_rfc3339_form_parses_to_its_instant(text: str, expected: float) -> None:
    assert from_rfc3339(text) == pytest.approx(expected, abs=1e-6)


def test_to_rfc3339_round_trips() -> None:
    assert to_rfc3339(T0) == "2026-01-02T03:04:05Z"
    assert from_rfc3339(to_rfc3339(NOW)) == NOW


#: Strings a status may hold that are no instant (the apiserver's `date-time` check lets some of
#: them through: year 0, 30 February, a comma before the fraction).
UNUSABLE = [
    "0000-01-01T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-00-10T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2025-02-29T00:00:00Z",
    "2026-01-32T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:60:00Z",
    "2026-01-01T00:00:61Z",
    "2026-01-01T00:00:00",  # no offset: local time of an unknown zone
    "2026-01-01",
    "2026-01-01T00:00Z",
    "2026-01-01T00:00:00.Z",
    "2026-01-01T00:00:00,5Z",
    "2026-01-01T00:00:00+0200",
    "20260101T000000Z",
    "1767225600",
    "garbage",
    "",
    "2026-01-01T00:00:00Z garbage",
]


@pytest.mark.parametrize("text", UNUSABLE)
def test_an_unusable_string_reads_as_absent(text: str) -> None:
    assert from_rfc3339(text) is None


@pytest.mark.parametrize("value", [None, 0, 1767225600, 1.5, b"2026-01-01T00:00:00Z", [], {}])
def test_a_non_string_reads_as_absent(value: object) -> None:
    assert from_rfc3339(value) is None


@pytest.mark.parametrize("text", ["2026-01-01T00:00:00+24:00", "2026-01-01T00:00:00-99:99"])
def test_an_offset_of_a_day_or_more_reads_as_absent(text: str) -> None:
    assert from_rfc3339(text) is None


# --- what reads the status timestamps ----------------------------------------------------------


def _run_body(stamp: str, **patch: Any) -> dict[str, Any]:
    """A running run (one launcher restart behind it) whose every timestamp is `stamp`."""
    body = make_body(
        metadata={"resourceVersion": "7", "creationTimestamp": stamp},
        spec={"ttlSecondsAfterFinished": 60, "workers": {"min": 2, "max": 2}},
        status={
            "phase": "Running",
            "observedGeneration": 1,
            "desiredWorkers": 2,
            "currentWorkers": 2,
            "launcherRestarts": 1,
            "admittedTime": stamp,
            "startTime": stamp,
            "completionTime": stamp,
            "lastScaleTime": stamp,
            "belowMinSince": stamp,
            "launcherFailedTime": stamp,
            "conditions": [
                {
                    "type": "Admitted",
                    "status": "True",
                    "reason": "MinimumWorkersFit",
                    "lastTransitionTime": stamp,
                }
            ],
            "training": {"epoch": 1, "updatedAt": stamp},
        },
    )
    return merge(body, patch)


def _decide(body: dict[str, Any], pods: list[PodState]) -> dict[str, Any]:
    plan = decide_run(
        TrainingRun.model_validate(body),
        Children(pods, auth_ready=True),
        Grant(2, "MinimumWorkersFit", "granted"),
        invalid=None,
        cfg=CFG,
        now=NOW,
    )
    return plan.status_patch or {}


@pytest.mark.parametrize("stamp", UNUSABLE)
def test_the_cache_reads_a_run_with_unusable_timestamps(stamp: str) -> None:
    view = CachedRun.of(_run_body(stamp))
    assert view.invalid is None
    assert view.request is not None
    assert view.request.created == 0.0  # an unknown creation time queues it first, not never
    assert view.request.last_scale is None


@pytest.mark.parametrize("stamp", UNUSABLE)
def test_decide_run_rederives_unusable_timestamps(stamp: str) -> None:
    # below the minimum (one of two workers ready) after a launcher failure: both clocks start now
    failed = launcher(phase="Failed", exit_code=1, finished_at=from_rfc3339(stamp))
    patch = _decide(_run_body(stamp), [failed, worker(0), worker(1, ready=False)])
    assert patch["belowMinSince"] == to_rfc3339(NOW)
    assert patch["launcherFailedTime"] == to_rfc3339(NOW)
    # finished: the TTL counts from now when the completion time is unusable
    finished = _run_body(stamp, status={"phase": "Succeeded"})
    plan = decide_run(
        TrainingRun.model_validate(finished),
        Children([], auth_ready=True),
        Grant(0, "MinimumWorkersFit", ""),
        invalid=None,
        cfg=CFG,
        now=NOW,
    )
    assert not plan.delete_run
    assert plan.requeue_after == 60


@pytest.mark.parametrize("stamp", UNUSABLE)
def test_a_pod_with_an_unusable_finish_time_has_none(stamp: str) -> None:
    body = {
        "metadata": {"name": "mnist-launcher", "labels": {"accordion.dev/run": "mnist"}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 1, "finishedAt": stamp}}},
            ],
        },
    }
    state = pod_state(body)
    assert state.exit_code == 1
    assert state.finished_at is None
