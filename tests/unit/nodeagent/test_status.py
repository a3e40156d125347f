"""Pod phase, conditions, container statuses and restart decisions, as kubelet computes them."""

from __future__ import annotations

import pytest

from accordion_dev.nodeagent.status import (
    Container,
    PodStatusInput,
    Terminated,
    backoff_delay,
    build_status,
    compute_conditions,
    compute_phase,
    decide_restart,
    exit_reason,
)


def running(name: str, ready: bool = True) -> Container:
    return Container(name, state="running", started_at=100.0, ready=ready)


def done(name: str, code: int, init: bool = False) -> Container:
    reason = "Completed" if code == 0 else "Error"
    return Container(name, init=init, state="terminated", terminated=Terminated(code, reason, 1, 2))


def backing_off(name: str) -> Container:
    return Container(name, waiting_reason="CrashLoopBackOff", last=Terminated(1, "Error", 1, 2))


@pytest.mark.parametrize(
    ("policy", "inits", "apps", "phase"),
    [
        ("Never", [], [Container("a")], "Pending"),
        ("Never", [running("i")], [Container("a")], "Pending"),
        ("Never", [done("i", 1, init=True)], [Container("a")], "Failed"),
        ("OnFailure", [done("i", 1, init=True)], [Container("a")], "Pending"),
        ("Never", [done("i", 0, init=True)], [running("a")], "Running"),
        ("Never", [], [done("a", 0), done("b", 0)], "Succeeded"),
        ("Never", [], [done("a", 0), done("b", 2)], "Failed"),
        ("Never", [], [done("a", 0), running("b")], "Running"),
        ("OnFailure", [], [done("a", 0)], "Succeeded"),
        ("OnFailure", [], [done("a", 1)], "Running"),
        ("Always", [], [done("a", 0)], "Running"),
        ("Always", [], [backing_off("a")], "Running"),
    ],
)
def test_phase(policy: str, inits: list[Container], apps: list[Container], phase: str) -> None:
    assert compute_phase(policy, inits, apps) == phase


@pytest.mark.parametrize(
    ("policy", "code", "init", "restart"),
    [
        ("Always", 0, False, True),
        ("Always", 1, False, True),
        ("OnFailure", 0, False, False),
        ("OnFailure", 1, False, True),
        ("Never", 1, False, False),
        ("Always", 0, True, False),
        ("Always", 1, True, True),
        ("Never", 1, True, False),
    ],
)
def test_restart_policy(policy: str, code: int, init: bool, restart: bool) -> None:
    assert decide_restart(policy, code, init) is restart


def test_backoff_is_immediate_then_doubles_up_to_the_cap() -> None:
    delays = [backoff_delay(n, base=10, cap=300) for n in range(8)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]


def test_exit_reasons() -> None:
    assert exit_reason(0) == (0, "Completed", None)
    assert exit_reason(3) == (3, "Error", None)
    assert exit_reason(-9) == (137, "Error", 9)
    assert exit_reason(-15) == (143, "Error", 15)
    assert exit_reason(-9, oom=True) == (137, "OOMKilled", 9)


def test_conditions_keep_transition_times_until_the_status_changes() -> None:
    apps = [running("a", ready=False)]
    first = compute_conditions("Running", True, [], apps, [], now=1000)
    ready = {c["type"]: c for c in first}["Ready"]
    assert ready["status"] == "False"
    assert ready["reason"] == "ContainersNotReady"
    assert "['a']" in ready["message"]
    again = compute_conditions("Running", True, [], apps, first, now=2000)
    assert {c["type"]: c for c in again}["Ready"]["lastTransitionTime"] == "1970-01-01T00:16:40Z"
    apps[0].ready = True
    later = {c["type"]: c for c in compute_conditions("Running", True, [], apps, again, now=3000)}
    assert later["Ready"]["status"] == "True"
    assert later["Ready"]["lastTransitionTime"] == "1970-01-01T00:50:00Z"
    assert later["Initialized"]["lastTransitionTime"] == "1970-01-01T00:16:40Z"


def test_conditions_of_pending_init_and_completed_pods() -> None:
    init = {
        c["type"]: c
        for c in compute_conditions("Pending", True, [running("i")], [Container("a")], [], 1)
    }
    assert init["Initialized"]["status"] == "False"
    assert init["Initialized"]["reason"] == "ContainersNotInitialized"
    finished = {
        c["type"]: c for c in compute_conditions("Succeeded", True, [], [done("a", 0)], [], 1)
    }
    assert finished["Ready"]["reason"] == "PodCompleted"
    assert finished["PodReadyToStartContainers"]["status"] == "False"


def test_container_status_nulls_the_states_it_does_not_have() -> None:
    c = backing_off("a")
    c.restart_count = 2
    c.waiting_message = "back-off 10s"
    s = c.status("img")
    assert s["state"] == {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"},
        "running": None,
        "terminated": None,
    }
    assert s["lastState"]["terminated"]["exitCode"] == 1
    assert s["restartCount"] == 2
    assert s["ready"] is False
    t = done("b", 0).status("img")
    assert t["state"]["terminated"]["reason"] == "Completed"
    assert t["state"]["waiting"] is None
    assert t["lastState"] == {}


def test_build_status_carries_ips_and_both_status_lists() -> None:
    body = build_status(
        PodStatusInput(
            phase="Running",
            pod_ip="127.100.0.2",
            host_ip="127.100.0.1",
            start_time=0,
            conditions=[],
            inits=[done("i", 0, init=True)],
            apps=[running("a")],
        )
    )
    assert body["podIP"] == "127.100.0.2"
    assert body["podIPs"] == [{"ip": "127.100.0.2"}]
    assert body["hostIP"] == "127.100.0.1"
    assert [s["name"] for s in body["initContainerStatuses"]] == ["i"]
    assert body["containerStatuses"][0]["state"]["running"]["startedAt"] == "1970-01-01T00:01:40Z"
