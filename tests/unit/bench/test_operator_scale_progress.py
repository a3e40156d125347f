"""benchmarks.operator_scale: run decisions and worker pods counted from watch events."""

from typing import Any

import pytest

from benchmarks.operator_scale import Progress, decision


def _run(name: str, *conditions: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": "TrainingRun",
        "metadata": {
            "namespace": "ns",
            "name": name,
            "resourceVersion": "7",
            "creationTimestamp": "2026-11-22T10:00:00Z",
        },
        "status": {"conditions": list(conditions)},
    }


def _admitted(status: str, reason: str, at: str = "2026-11-22T10:00:05Z") -> dict[str, str]:
    return {"type": "Admitted", "status": status, "reason": reason, "lastTransitionTime": at}


def test_decision_is_admitted_or_queued_for_gpus_with_its_delay() -> None:
    assert decision(_run("a", _admitted("True", "GangAdmitted"))) == ("admitted", 5.0)
    assert decision(_run("q", _admitted("False", "WaitingForGPUs"))) == ("queued", 5.0)
    # not a decision the benchmark waits for: invalid, or no Admitted condition yet
    assert decision(_run("i", _admitted("False", "InvalidSpec"))) is None
    assert decision(_run("n")) is None


def test_events_count_worker_pods_and_the_latest_decision_per_run() -> None:
    p = Progress(cluster=None)  # type: ignore[arg-type]  # events only, no watch started
    pod = {"kind": "PartialObjectMetadata", "metadata": {"namespace": "ns", "name": "w0"}}
    assert p._event({"type": "ADDED", "object": pod}) is None  # no resourceVersion
    p._event({"type": "ADDED", "object": {**pod, "metadata": {**pod["metadata"], "name": "w1"}}})
    p._event({"type": "DELETED", "object": pod})
    p._event({"type": "ADDED", "object": _run("r", _admitted("False", "WaitingForGPUs"))})
    assert p.counts() == (1, 0, 1)
    rv = p._event(
        {
            "type": "MODIFIED",
            "object": _run("r", _admitted("True", "GangAdmitted", at="2026-11-22T10:01:00Z")),
        }
    )
    assert rv == "7"
    assert p.counts() == (1, 1, 0)
    assert p.delays() == [60.0]


def test_a_watch_error_is_raised_but_an_expired_version_starts_over() -> None:
    p = Progress(cluster=None)  # type: ignore[arg-type]
    gone = {"code": 410, "message": "too old resource version"}
    assert p._event({"type": "ERROR", "object": gone}) == "0"
    with pytest.raises(RuntimeError, match="forbidden"):
        p._event({"type": "ERROR", "object": {"code": 403, "message": "forbidden"}})
