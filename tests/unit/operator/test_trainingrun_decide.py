"""decide_run and friends: observed run + children + grant -> plan, without a cluster (the
lifecycle as a table of transitions: test_trainingrun_transitions.py)."""

from __future__ import annotations

from typing import Any

import pytest
from merge_patch import merge
from trainingrun_factory import launcher, make_body, make_run, worker

from accordion_operator.api.trainingrun import TrainingRun
from accordion_operator.config import Config
from accordion_operator.core.timefmt import to_rfc3339
from accordion_operator.trainingrun.allocator import Grant
from accordion_operator.trainingrun.checks import check_run
from accordion_operator.trainingrun.decide import Plan, decide_run, rescale_reason, unparsable_plan
from accordion_operator.trainingrun.observe import (
    Children,
    PodState,
    SecretInfo,
    parse_run,
    pod_state,
    run_request,
)

CFG = Config(launcher_backoff_seconds=10, launcher_backoff_max_seconds=60)
NOW = 1_800_000_000.0
OK_SECRET = {"s3": SecretInfo(frozenset({"accessKey", "secretKey"}))}


def decide(
    run: TrainingRun,
    pods: list[PodState],
    grant: int = 2,
    reason: str = "MinimumWorkersFit",
    message: str = "granted",
    invalid: tuple[str, str] | None = None,
    now: float = NOW,
) -> Plan:
    return decide_run(
        run,
        Children(pods, auth_ready=True),
        Grant(grant, reason, message),
        invalid=invalid,
        cfg=CFG,
        now=now,
    )


def with_status(run: TrainingRun, plan: Plan) -> TrainingRun:
    """The run as it looks after the plan's status patch was applied."""
    body = run.model_dump(by_alias=True, exclude_none=True)
    body["status"] = merge(body.get("status") or {}, plan.status_patch or {})
    return TrainingRun.model_validate(body)


def cond(plan: Plan, ctype: str) -> dict[str, Any]:
    assert plan.status_patch is not None
    return next(c for c in plan.status_patch["conditions"] if c["type"] == ctype)


def names(objs: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_admitted_run_gets_launcher_and_workers() -> None:
    run = make_run()
    plan = decide_run(
        run,
        Children([], auth_ready=False),
        Grant(2, "MinimumWorkersFit", "granted 2"),
        invalid=None,
        cfg=CFG,
        now=NOW,
    )
    assert plan.ensure_auth
    # the launcher hosts worker 0 (Config.launcher_hosts_worker, on by default)
    assert names(plan.create) == ["mnist-launcher", "mnist-worker-1"]
    st = plan.status_patch
    assert st is not None
    assert st["phase"] == "Running"
    assert st["desiredWorkers"] == 2
    assert st["currentWorkers"] == 0
    assert st["workerSummary"] == "0/2"
    assert st["startTime"] == to_rfc3339(NOW)
    assert st["selector"] == "accordion.dev/run=mnist,accordion.dev/worker-index"
    assert cond(plan, "Admitted")["status"] == "True"
    assert cond(plan, "Scaling")["reason"] == "ScalingUp"
    assert plan.events == []  # admission is in status; Events are for trouble


def test_steady_state_is_a_no_op() -> None:
    """Level-based and idempotent: deciding again on the result changes nothing."""
    run = make_run()
    pods = [launcher(), worker(0), worker(1)]
    first = decide(run, pods)
    assert first.create == []
    assert first.delete_pods == []
    run = with_status(run, first)
    again = decide(run, pods, now=NOW + 5)
    assert again.status_patch is None
    assert again.events == []
    assert again.create == []
    assert again.delete_pods == []
    assert cond(first, "Running")["status"] == "True"


def test_queued_run_creates_nothing_and_says_why() -> None:
    plan = decide(make_run(), [], grant=0, reason="WaitingForGPUs", message="waiting for 1 GPUs")
    assert plan.create == []
    assert not plan.ensure_auth
    assert plan.status_patch is not None
    assert plan.status_patch["phase"] == "Queued"
    assert cond(plan, "Admitted")["reason"] == "WaitingForGPUs"
    assert plan.events == []


def test_preempted_run_frees_every_pod() -> None:
    run = make_run(status={"phase": "Running", "desiredWorkers": 2})
    plan = decide(
        run,
        [launcher(), worker(0), worker(1)],
        grant=0,
        reason="PreemptedByHigherPriority",
        message="preempted",
    )
    assert sorted(plan.delete_pods) == ["mnist-launcher", "mnist-worker-0", "mnist-worker-1"]
    assert ("Warning", "PreemptedByHigherPriority", "preempted") in plan.events


def test_invalid_run_is_reported_not_started() -> None:
    plan = decide(
        make_run(), [], invalid=("CredentialsSecretNotFound", "Secret team-a/s3 not found")
    )
    assert plan.create == []
    assert plan.status_patch is not None
    assert plan.status_patch["phase"] == "Pending"
    assert cond(plan, "Admitted") | {"lastTransitionTime": None} == cond(plan, "Admitted") | {
        "reason": "CredentialsSecretNotFound",
        "status": "False",
        "lastTransitionTime": None,
    }
    assert plan.events[0][:2] == ("Warning", "CredentialsSecretNotFound")


def test_scale_down_keeps_the_workers_that_train() -> None:
    pods = [
        launcher(),
        worker(0),
        worker(1),
        worker(2, ready=False),
        worker(3, node=None),
        worker(4),
    ]
    plan = decide(make_run(spec={"workers": {"max": 8}}), pods, grant=2)
    assert plan.delete_pods == ["mnist-worker-3", "mnist-worker-2", "mnist-worker-4"]
    assert plan.create == []


def test_scale_down_removes_the_rank0_pod_last() -> None:
    """Rank 0 writes the checkpoints and the model: a shrink that took its pod during a save
    would fail the launcher. Here rank 0 runs on the highest index (it was Ready first)."""
    pods = [launcher(), worker(0), worker(1), worker(2)]
    run = make_run(
        spec={"workers": {"max": 8}},
        status={"phase": "Running", "training": {"epoch": 1, "rank0Pod": "mnist-worker-2"}},
    )
    assert decide(run, pods, grant=1).delete_pods == ["mnist-worker-1", "mnist-worker-0"]
    # without the report, the highest index goes first, as before
    assert decide(make_run(spec={"workers": {"max": 8}}), pods, grant=2).delete_pods == [
        "mnist-worker-2"
    ]


def test_failed_worker_is_replaced_at_a_free_index() -> None:
    pods = [launcher(), worker(0), worker(1, phase="Failed", exit_code=137)]
    plan = decide(make_run(), pods, grant=2)
    assert plan.delete_pods == ["mnist-worker-1"]
    assert names(plan.create) == ["mnist-worker-2"]
    assert any(e[1] == "WorkerReplaced" for e in plan.events)


def test_launcher_success_finishes_the_run_and_ttl_deletes_it() -> None:
    run = make_run(spec={"ttlSecondsAfterFinished": 60})
    plan = decide(run, [launcher(phase="Succeeded", exit_code=0), worker(0), worker(1)])
    assert plan.status_patch is not None
    assert plan.status_patch["phase"] == "Succeeded"
    assert cond(plan, "Succeeded")["status"] == "True"
    assert sorted(plan.delete_pods) == ["mnist-worker-0", "mnist-worker-1"]  # launcher kept
    done = with_status(run, plan)
    later = decide(done, [launcher(phase="Succeeded", exit_code=0)], now=NOW + 30)
    assert not later.delete_run
    assert later.requeue_after == pytest.approx(30)
    assert decide(done, [launcher(phase="Succeeded", exit_code=0)], now=NOW + 61).delete_run


def test_permanent_trainer_error_fails_at_once() -> None:
    failed = launcher(phase="Failed", exit_code=12, message="bucket data not found")
    plan = decide(make_run(), [failed, worker(0), worker(1)])
    assert plan.status_patch is not None
    assert plan.status_patch["phase"] == "Failed"
    failed = cond(plan, "Failed")
    assert failed["reason"] == "DataNotFound"
    assert "bucket data not found" in failed["message"]


def test_worker_data_error_fails_the_run_but_unreachable_is_retried() -> None:
    bad = worker(1, phase="Failed", ready=False, exit_code=11, message="DataAccessDenied: key")
    plan = decide(make_run(), [launcher(), worker(0), bad])
    assert cond(plan, "Failed")["reason"] == "DataAccessDenied"
    assert "mnist-worker-1" in cond(plan, "Failed")["message"]
    flaky = worker(1, phase="Failed", ready=False, exit_code=10, message="DataUnreachable")
    plan = decide(make_run(), [launcher(), worker(0), flaky])
    assert plan.delete_pods == ["mnist-worker-1"]
    assert names(plan.create) == ["mnist-worker-2"]


def test_launcher_restarts_with_exponential_backoff_then_gives_up() -> None:
    pods = [launcher(phase="Failed", exit_code=1, finished_at=NOW - 5), worker(0), worker(1)]
    run = make_run(spec={"backoffLimit": 2}, status={"launcherRestarts": 1})
    waiting = decide(run, pods)  # second restart waits 10 * 2**1 = 20 s
    assert waiting.delete_pods == []
    assert waiting.requeue_after == pytest.approx(15)
    assert cond(waiting, "Running")["reason"] == "LauncherBackoff"
    due = decide(run, pods, now=NOW + 16)
    assert due.delete_pods == ["mnist-launcher"]
    assert due.status_patch is not None
    assert due.status_patch["launcherRestarts"] == 2
    exhausted = make_run(spec={"backoffLimit": 2}, status={"launcherRestarts": 2})
    plan = decide(exhausted, pods)
    assert cond(plan, "Failed")["reason"] == "BackoffLimitExceeded"


def test_suspend_frees_gpus() -> None:
    plan = decide(make_run(spec={"suspend": True}), [launcher(), worker(0)], grant=0)
    assert sorted(plan.delete_pods) == ["mnist-launcher", "mnist-worker-0"]
    assert plan.status_patch is not None
    assert plan.status_patch["phase"] == "Suspended"
    assert cond(plan, "Suspended")["status"] == "True"


def test_below_min_for_too_long_fails() -> None:
    run = make_run(
        spec={"workers": {"min": 2, "minAvailableTimeoutSeconds": 60}},
        status={"belowMinSince": to_rfc3339(NOW - 61)},
    )
    plan = decide(run, [launcher(), worker(0), worker(1, ready=False)])
    assert cond(plan, "Failed")["reason"] == "BelowMinimumWorkers"
    young = make_run(spec={"workers": {"min": 2, "minAvailableTimeoutSeconds": 60}})
    plan = decide(young, [launcher(), worker(0), worker(1, ready=False)])
    assert plan.status_patch is not None
    assert plan.status_patch["belowMinSince"] == to_rfc3339(NOW)
    assert plan.requeue_after == pytest.approx(60)


def test_image_pull_failure_is_a_condition() -> None:
    pods = [
        launcher(),
        worker(
            0,
            ready=False,
            phase="Pending",
            waiting_reason="ErrImagePull",
            waiting_message="no such image",
        ),
    ]
    plan = decide(make_run(), pods, grant=1)
    running = cond(plan, "Running")
    assert running["reason"] == "ImagePullFailed"
    assert "no such image" in running["message"]


def test_check_run() -> None:
    assert check_run(make_run(), OK_SECRET, CFG) is None
    assert check_run(make_run(spec={"model": {"builtin": "resnet-9000"}}), OK_SECRET, CFG)[0] == (
        "UnknownBuiltinModel"
    )
    reason, message = check_run(make_run(), {"s3": None}, CFG)  # type: ignore[misc]
    assert reason == "CredentialsSecretNotFound"
    assert "team-a/s3" in message
    partial = {"s3": SecretInfo(frozenset({"accessKey"}))}
    assert check_run(make_run(), partial, CFG) == (
        "CredentialsSecretInvalid",
        "spec.results.credentialsSecret: Secret team-a/s3 lacks key(s) secretKey",
    )
    bad_name = parse_run(make_body(spec={"hyperparameters": {"1st": 1}}))
    assert isinstance(bad_name, tuple)
    assert bad_name[0] == "InvalidHyperparameters"
    assert "1st" in bad_name[1]


def test_parse_run_reports_values_the_schema_cannot_check() -> None:
    got = parse_run(make_body(spec={"hyperparameters": {"opt": {"name": "adam"}}}))
    assert isinstance(got, tuple)
    assert got[0] == "InvalidHyperparameters"
    assert isinstance(
        parse_run(make_body(spec={"hyperparameters": {"lr": 0.1, "opt": "adam", "layers": 3}})),
        TrainingRun,
    )


def test_pod_state_parses_what_matters() -> None:
    body = {
        "metadata": {
            "name": "mnist-worker-2",
            "labels": {
                "accordion.dev/run": "mnist",
                "accordion.dev/role": "worker",
                "accordion.dev/worker-index": "2",
            },
        },
        "spec": {
            "nodeName": "n7",
            "containers": [{"resources": {"requests": {"nvidia.com/gpu": "2"}}}],
        },
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 11,
                            "message": "DataAccessDenied: bad key\n",
                            "finishedAt": "2026-01-01T00:00:10Z",
                        }
                    }
                }
            ],
        },
    }
    st = pod_state(body)
    assert (st.index, st.node, st.gpus, st.exit_code, st.terminal, st.ready) == (
        2,
        "n7",
        2,
        11,
        True,
        False,
    )
    assert st.message == "DataAccessDenied: bad key"


def test_run_request_uses_the_previous_grant_only_when_admitted() -> None:
    admitted = make_run(
        spec={"priorityClassName": "high", "workers": {"min": 2, "max": 6, "replicas": 4}},
        status={
            "desiredWorkers": 4,
            "lastScaleTime": "2026-01-01T00:01:00Z",
            "conditions": [
                {
                    "type": "Admitted",
                    "status": "True",
                    "reason": "MinimumWorkersFit",
                    "lastTransitionTime": "2026-01-01T00:01:00Z",
                }
            ],
        },
    )
    req = run_request(admitted)
    # the class's value is resolved per pass (controller), not from the run alone
    assert (req.key, req.priority, req.min, req.max, req.requested, req.previous) == (
        "team-a/mnist",
        0,
        2,
        6,
        4,
        4,
    )
    assert req.last_scale == pytest.approx(1767225660.0)
    assert run_request(make_run(status={"desiredWorkers": 4})).previous == 0


OWN_RESULTS = "s3://results/team-a/mnist-5f0c3a9e8d21"


def test_the_status_patch_leaves_the_trainers_progress_alone() -> None:
    """`training` is written by the launcher; the operator copies nothing from it."""
    run = make_run(status={"phase": "Running", "training": {"epoch": 3, "resultsURI": "s3://x/y"}})
    plan = decide(run, [launcher(), worker(0), worker(1)])
    assert plan.status_patch is not None
    assert "training" not in plan.status_patch
    assert plan.status_patch["resultsURI"] == OWN_RESULTS


def test_results_uri_is_the_run_objects_own_folder_from_admission_on() -> None:
    """status.resultsURI is where the pods were told to write (ACCORDION_RESULTS_PATH), set at
    admission; a different URI in the trainer's report (user code steers it) or patched into
    status by the launcher does not replace it, in any phase."""
    queued = decide(make_run(), [], grant=0, reason="WaitingForGPUs")
    assert queued.status_patch is not None
    assert "resultsURI" not in queued.status_patch  # nothing is written before admission
    run = make_run()
    admitted = decide(run, [])
    assert admitted.status_patch is not None
    assert admitted.status_patch["resultsURI"] == OWN_RESULTS
    elsewhere = "s3://results/team-b/mnist-0123456789ab"
    run = merge(
        with_status(run, admitted).model_dump(by_alias=True, exclude_none=True),
        {"status": {"resultsURI": elsewhere, "training": {"resultsURI": elsewhere}}},
    )
    pods = [launcher(), worker(0), worker(1)]
    # running, preempted (no grant), finished
    for status, grant in (({}, 2), ({}, 0), ({"phase": "Succeeded"}, 0), ({"phase": "Failed"}, 0)):
        plan = decide(TrainingRun.model_validate(merge(run, {"status": status})), pods, grant)
        assert plan.status_patch is not None
        assert plan.status_patch["resultsURI"] == OWN_RESULTS, status


def test_an_unparsable_run_is_reported_once_per_reason() -> None:
    body = make_body(
        metadata={"generation": 3}, spec={"hyperparameters": {"opt": {"name": "adam"}}}
    )
    message = "spec.hyperparameters.opt: " + "x" * 300
    plan = unparsable_plan(body, ("InvalidHyperparameters", message), NOW)
    assert plan is not None
    assert plan.status_patch == {
        "phase": "Pending",
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Admitted",
                "status": "False",
                "reason": "InvalidHyperparameters",
                "message": message,
                "lastTransitionTime": to_rfc3339(NOW),
                "observedGeneration": 3,
            }
        ],
        "message": message[:256],
    }
    assert plan.events == [("Warning", "InvalidHyperparameters", message)]
    assert (plan.create, plan.delete_pods, plan.delete_run) == ([], [], False)
    reported = merge(body, {"status": plan.status_patch})
    assert unparsable_plan(reported, ("InvalidHyperparameters", message), NOW + 60) is None
    # another reason (one value fixed, another broken) is reported again
    again = unparsable_plan(reported, ("InvalidSpec", "spec.epochs: not an integer"), NOW + 60)
    assert again is not None
    assert again.events == [("Warning", "InvalidSpec", "spec.epochs: not an integer")]


@pytest.mark.parametrize(
    ("old", "new", "preempted", "replicas", "reason"),
    [
        (0, 2, False, None, "Admitted"),
        (3, 0, True, None, "Preempted"),  # a higher priority took the minimum
        (3, 1, False, 1, "SpecChanged"),  # `kubectl scale --replicas 1`: the grant follows
        (3, 2, False, None, "Preempted"),  # below what the run asks for: GPUs went to others
        (2, 3, False, None, "CapacityAvailable"),
    ],
)
def test_rescale_reason(
    old: int, new: int, preempted: bool, replicas: int | None, reason: str
) -> None:
    workers: dict[str, Any] = {"min": 1, "max": 3}
    if replicas is not None:
        workers["replicas"] = replicas
    run = make_run(spec={"workers": workers})
    assert rescale_reason(run, old, new, preempted=preempted) == reason


def _training(run: TrainingRun, pods: list[PodState], updated: float, **status: Any) -> TrainingRun:
    """The run Running (since NOW) with its last progress report at `updated`."""
    run = with_status(run, decide(run, pods))
    body = run.model_dump(by_alias=True, exclude_none=True)
    body["status"] |= {"training": {"epoch": 3, "updatedAt": to_rfc3339(updated)}, **status}
    return TrainingRun.model_validate(body)


def test_a_run_without_progress_is_restarted_once_then_fails_as_stalled() -> None:
    """The watchdog: a launcher Running, workers Ready, and no progress report for the deadline
    (a hung collective, a training process killed in a Ready pod) holds GPUs for nothing."""
    pods = [launcher(), worker(0), worker(1)]
    deadline = 600
    run = _training(make_run(spec={"progressDeadlineSeconds": deadline}), pods, NOW + 100)
    quiet = decide(run, pods, now=NOW + 100 + deadline - 60)
    assert quiet.delete_pods == []
    assert quiet.requeue_after == pytest.approx(60)
    stalled = decide(run, pods, now=NOW + 100 + deadline + 1)
    assert stalled.delete_pods == ["mnist-launcher"]
    assert [(t, r) for t, r, _ in stalled.events] == [("Warning", "Stalled")]
    assert stalled.status_patch is not None
    assert stalled.status_patch["stallRestarts"] == 1
    assert stalled.status_patch["launcherRestarts"] == 1
    # after the restart the clock starts again from the Running condition's new transition
    again = _training(make_run(spec={"progressDeadlineSeconds": deadline}), pods, NOW - 5000)
    again = TrainingRun.model_validate(
        merge(again.model_dump(by_alias=True, exclude_none=True), {"status": {"stallRestarts": 1}})
    )
    assert decide(again, pods, now=NOW + deadline - 1).delete_pods == []
    failed = decide(again, pods, now=NOW + deadline + 1)
    assert cond(failed, "Failed")["reason"] == "Stalled"
    assert "again after a restart" in cond(failed, "Failed")["message"]


def test_the_watchdog_is_off_with_a_zero_deadline_and_waits_while_starting() -> None:
    pods = [launcher(), worker(0), worker(1)]
    off = _training(make_run(spec={"progressDeadlineSeconds": 0}), pods, NOW - 10**6)
    assert decide(off, pods, now=NOW + 10**6).delete_pods == []
    # not Running yet (a worker not ready): the below-minimum deadline applies, not this one
    starting = [launcher(), worker(0), worker(1, ready=False)]
    run = make_run(spec={"progressDeadlineSeconds": 60, "workers": {"min": 2, "max": 2}})
    assert decide(run, starting, now=NOW + 10**4).events == []


def test_a_progress_time_in_the_future_counts_as_now() -> None:
    """status.training is the launcher's to write: a forged future updatedAt buys one deadline
    from now, not a stall that is never noticed."""
    pods = [launcher(), worker(0), worker(1)]
    run = _training(make_run(spec={"progressDeadlineSeconds": 600}), pods, NOW + 10**6)
    plan = decide(run, pods, now=NOW + 10)
    assert plan.requeue_after == pytest.approx(600)


@pytest.mark.parametrize(
    ("value", "words"),
    [(-1, "greater than or equal to 0"), (10**7, "less than or equal to 604800")],
)
def test_a_progress_deadline_out_of_range_is_refused_with_the_field_named(
    value: int, words: str
) -> None:
    """The CRD's minimum/maximum refuse it at apply; a stored one reads as InvalidSpec."""
    parsed = parse_run(make_body(spec={"progressDeadlineSeconds": value}))
    assert isinstance(parsed, tuple)
    reason, message = parsed
    assert reason == "InvalidSpec"
    assert message.startswith("spec.progressDeadlineSeconds:")
    assert words in message
