"""The launcher pod that hosts worker 0 (ACCORDION_LAUNCHER_HOSTS_WORKER, the MPI operator's
runLauncherAsWorker): one pod fewer per run. The decisions, without a cluster: what is created
for a grant, what a shrink may take, the index the launcher keeps while it is being restarted,
what a finished run frees; and the pod itself."""

from __future__ import annotations

from typing import Any

from merge_patch import merge
from trainingrun_factory import make_run, pod, worker

from accordion_operator.api.trainingrun import TrainingRun
from accordion_operator.config import Config
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.allocator import Grant
from accordion_operator.trainingrun.decide import Plan, decide_run
from accordion_operator.trainingrun.kueue import LABEL_QUEUE
from accordion_operator.trainingrun.observe import Children, PodState, pod_state
from accordion_operator.trainingrun.phases import hosts_worker

CFG = Config(launcher_hosts_worker=True, world_grace_seconds=60)
NOW = 1_800_000_000.0


def hosting(**state: Any) -> PodState:
    """The run's launcher that hosts worker 0 (one GPU, worker-index 0)."""
    return pod("mnist-launcher", role="launcher", index=0, **state)


def decide(run: TrainingRun, observed: list[PodState], workers: int, **kw: Any) -> Plan:
    return decide_run(
        run,
        Children(observed, auth_ready=True),
        Grant(workers, "MinimumWorkersFit", "granted"),
        invalid=None,
        cfg=kw.pop("cfg", CFG),
        now=kw.pop("now", NOW),
    )


def created(plan: Plan) -> list[str]:
    return sorted(o["metadata"]["name"] for o in plan.create if o["kind"] == "Pod")


def with_status(run: TrainingRun, plan: Plan) -> TrainingRun:
    body = run.model_dump(by_alias=True, exclude_none=True)
    body["status"] = merge(body.get("status") or {}, plan.status_patch or {})
    return TrainingRun.model_validate(body)


def test_the_pod_is_worker_0_under_the_launchers_name_and_identity() -> None:
    run = make_run(spec={"workers": {"min": 1, "max": 3, "gpusPerWorker": 2}})
    pod_body = builders.build_launcher_pod(run, CFG, hosts_worker=True)
    w0 = builders.build_worker_pod(run, 0, CFG)
    meta, spec = pod_body["metadata"], pod_body["spec"]
    assert meta["name"] == "mnist-launcher"  # what the launcher admission policy checks
    assert meta["labels"][builders.LABEL_ROLE] == "launcher"
    assert meta["labels"][builders.LABEL_INDEX] == "0"  # the trainer's discovery lists it first
    assert spec["serviceAccountName"] == builders.LAUNCHER_IDENTITY
    assert "automountServiceAccountToken" not in spec  # the launcher's token, for discovery
    (c,) = spec["containers"]
    (c0,) = w0["spec"]["containers"]
    assert c["command"] == ["python", "-m", "accordion_trainer", "launcher"]
    # a worker's resources, credentials (stage-in), data volume, ssh port and readiness
    assert c["resources"] == c0["resources"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert c["env"] == c0["env"]
    assert {"name": "ACCORDION_WORKER_INDEX", "value": "0"} in c["env"]
    assert c["readinessProbe"] == c0["readinessProbe"]
    assert spec["volumes"] == w0["spec"]["volumes"]
    state = pod_state(pod_body)
    assert state.hosts_worker
    assert state.gpus == 2
    assert state.max_workers == 3
    assert not pod_state(builders.build_launcher_pod(run, CFG)).hosts_worker


def test_a_grant_of_n_is_the_launcher_and_n_minus_1_workers() -> None:
    run = make_run(spec={"workers": {"min": 1, "max": 3}})
    assert created(decide(run, [], 1)) == ["mnist-launcher"]
    assert created(decide(run, [], 3)) == ["mnist-launcher", "mnist-worker-1", "mnist-worker-2"]
    # the setting off: a launcher beside the grant's workers, as before
    own = decide(run, [], 1, cfg=Config(launcher_hosts_worker=False))
    assert created(own) == ["mnist-launcher", "mnist-worker-0"]
    # growing a running run adds workers after index 0
    plan = decide(run, [hosting(), worker(1)], 3)
    assert created(plan) == ["mnist-worker-2"]


def test_the_run_counts_the_launcher_as_a_ready_worker() -> None:
    run = make_run(spec={"workers": {"min": 2, "max": 3}})
    plan = decide(run, [hosting(), worker(1)], 2)
    st = with_status(run, plan).status
    assert (st.current_workers, st.ready_workers) == (2, 2)
    assert st.phase == "Running"
    running = next(c for c in st.conditions if c.type == "Running")
    assert running.status == "True", running
    assert plan.create == []
    assert plan.delete_pods == []


def test_a_shrink_never_takes_the_launcher_even_when_it_is_the_newest() -> None:
    run = make_run(spec={"workers": {"min": 1, "max": 3}})
    observed = [hosting(created=NOW - 1, ready=False), worker(1), worker(2)]
    plan = decide(run, observed, 1)
    assert sorted(plan.delete_pods) == ["mnist-worker-1", "mnist-worker-2"]


def test_a_launcher_waiting_for_its_restart_keeps_index_0_and_its_share() -> None:
    run = make_run(spec={"workers": {"min": 1, "max": 3}, "backoffLimit": 3})
    failed = hosting(phase="Failed", exit_code=1, finished_at=NOW - 1)
    plan = decide(run, [failed, worker(1)], 2)
    assert plan.create == []  # no worker-0 beside the launcher that will come back
    assert plan.delete_pods == []  # the backoff runs
    later = decide(run, [failed, worker(1)], 2, now=NOW + 3600)
    assert later.delete_pods == ["mnist-launcher"]
    # once it is gone, the next decision creates it again, hosting
    again = decide(with_status(run, later), [worker(1)], 2, now=NOW + 3601)
    assert created(again) == ["mnist-launcher"]
    assert pod_state(again.create[0]).hosts_worker


def test_a_hosted_worker_that_fails_is_the_launchers_failure_not_a_replacement() -> None:
    run = make_run(spec={"workers": {"min": 1, "max": 2}, "backoffLimit": 0})
    plan = decide(run, [hosting(phase="Failed", exit_code=1), worker(1)], 2)
    assert not any(e[1] == "WorkerReplaced" for e in plan.events)
    st = with_status(run, plan).status
    assert st.phase == "Failed"
    assert "mnist-worker-1" in plan.delete_pods


def test_a_finished_run_frees_a_hosting_launcher_that_still_runs_and_keeps_a_finished_one() -> None:
    run = make_run(spec={"workers": {"min": 1, "max": 2}, "backoffLimit": 0})
    ended = decide(run, [hosting(phase="Failed", exit_code=1), worker(1)], 2)
    done = with_status(run, ended)
    assert done.status.phase == "Failed"
    # a finished launcher holds nothing: it stays for its logs
    assert decide(done, [hosting(phase="Failed", exit_code=1)], 0).delete_pods == []
    # one that still runs (the run failed for another reason) holds worker 0's GPUs: freed
    assert decide(done, [hosting()], 0).delete_pods == ["mnist-launcher"]


def test_a_ready_launcher_missing_from_the_world_is_never_replaced_as_a_worker() -> None:
    run = make_run(spec={"workers": {"min": 1, "max": 2}})
    early = NOW - 1000
    observed = [
        hosting(created=early, ready_since=early + 5, max_workers=2),
        worker(1, created=early, ready_since=early + 5),
    ]
    running = with_status(run, decide(run, observed, 2))
    body = running.model_dump(by_alias=True, exclude_none=True)
    body["status"]["training"] = {
        "epoch": 2,
        "worldPods": ["mnist-worker-1"],
        "worldTime": "2027-01-15T08:00:00Z",
    }
    plan = decide(TrainingRun.model_validate(body), observed, 2)
    assert plan.delete_pods == []


def test_runs_kueue_admits_keep_a_separate_launcher() -> None:
    assert hosts_worker(make_run(), CFG)
    assert hosts_worker(make_run(), Config())  # the default
    assert not hosts_worker(make_run(), Config(launcher_hosts_worker=False))
    queued = make_run(metadata={"labels": {LABEL_QUEUE: "team-a"}})
    assert not hosts_worker(queued, CFG)


def test_a_launcher_alone_in_its_run_mounts_no_ssh_secret() -> None:
    """max 1: the launcher's pod is the run's only host for good, and makes its own key pair
    (the trainer's incluster.alone); a run that may grow mounts the run's Secret."""
    alone = make_run(spec={"workers": {"min": 1, "max": 1}})
    pod_body = builders.build_launcher_pod(alone, CFG, hosts_worker=True)
    assert not builders.mounts_ssh_secret(pod_body)
    (c,) = pod_body["spec"]["containers"]
    assert all(m["name"] != "ssh" for m in c["volumeMounts"])
    assert {"name": "ACCORDION_MAX_WORKERS", "value": "1"} in c["env"]
    grows = make_run(spec={"workers": {"min": 1, "max": 2}})
    assert builders.mounts_ssh_secret(builders.build_launcher_pod(grows, CFG, hosts_worker=True))
    # a launcher of its own always reaches its workers with the run's key
    assert builders.mounts_ssh_secret(builders.build_launcher_pod(alone, CFG))
    assert builders.mounts_ssh_secret(builders.build_worker_pod(alone, 0, CFG))
