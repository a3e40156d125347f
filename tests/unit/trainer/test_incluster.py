"""Launcher/worker pure parts: discovery, progress reports, sshd config (docs/contract.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from accordion_trainer.errors import TrainerError
from accordion_trainer.horovod_run import ordered_hosts, rank_in_discovery_order, ssh_every_host
from accordion_trainer.incluster import (
    WORKER_SESSION_ENV,
    alone,
    launcher_env,
    led_by,
    left_world,
    own_key_pair,
    prepare_ssh_client,
    prepare_sshd,
    sshd_set_env,
)
from accordion_trainer.kube import ready_worker_ips, starting_worker_ips, worker_selector
from accordion_trainer.policy import decide_commit_every, scaled_lr
from accordion_trainer.progress import (
    Reporter,
    build_training_status,
    decide_report,
    parse_progress,
)


def _pod(
    name: str,
    index: int,
    ip: str | None,
    ready: bool = True,
    phase: str = "Running",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"accordion.dev/worker-index": str(index)}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def test_discovery_lists_only_ready_running_workers_in_index_order() -> None:
    pods = {
        "items": [
            _pod("r-worker-2", 2, "10.0.0.12"),
            _pod("r-worker-0", 0, "10.0.0.10"),
            _pod("r-worker-1", 1, "10.0.0.11", ready=False),
            _pod("r-worker-3", 3, None),
            _pod("r-worker-4", 4, "10.0.0.14", phase="Pending"),
            _pod("r-worker-5", 5, "10.0.0.15", deleting=True),
            _pod("r-worker-10", 10, "10.0.0.20"),
        ]
    }
    assert ready_worker_ips(pods) == ["10.0.0.10", "10.0.0.12", "10.0.0.20"]
    assert ready_worker_ips({}) == []
    # the worker pods, and a launcher that hosts worker 0: the pods with a worker index
    assert worker_selector("r") == "accordion.dev/run=r,accordion.dev/worker-index"
    # Running but not Ready yet: listed (in its index's place) once its sshd answers the
    # launcher itself, without waiting for the probe; never a pod that is not Running or going
    assert starting_worker_ips(pods) == ["10.0.0.11"]
    answering = {"10.0.0.11", "10.0.0.14", "10.0.0.15"}
    assert ready_worker_ips(pods, serving=answering.__contains__) == [
        "10.0.0.10",
        "10.0.0.11",
        "10.0.0.12",
        "10.0.0.20",
    ]


def test_discovery_trusts_only_pods_the_run_controls() -> None:
    """A pod with a run's worker labels but another controller (a tenant's copy, or a worker
    orphaned by a deleted run of the same name) is never offered to horovodrun as a host."""
    mine, copy = _pod("r-worker-0", 0, "10.0.0.10"), _pod("r-worker-x", 1, "10.0.0.66")
    mine["metadata"]["ownerReferences"] = [{"uid": "run-uid", "controller": True}]
    copy["metadata"]["ownerReferences"] = [{"uid": "other", "controller": True}]
    pods = {"items": [mine, copy]}
    assert ready_worker_ips(pods, "run-uid") == ["10.0.0.10"]
    assert ready_worker_ips(pods) == ["10.0.0.10", "10.0.0.66"]  # outside a run: no owner known


def test_report_rate_limit() -> None:
    assert decide_report(100.0, None, None, 0)
    assert not decide_report(101.0, 100.0, 0, 0)
    assert decide_report(102.0, 100.0, 0, 0)
    assert decide_report(100.1, 100.0, 0, 1)  # every epoch end goes out at once


def test_reporter_sends_at_most_every_two_seconds_and_flushes_the_last() -> None:
    now = [0.0]
    sent: list[dict[str, Any]] = []
    rep = Reporter(sent.append, clock=lambda: now[0])
    for step in range(50):  # 5 s of progress lines every 0.1 s within epoch 0
        now[0] = step * 0.1
        rep.offer({"epoch": 0, "batch": step, "worldSize": 2, "metrics": {"loss": 1.0}})
    assert [s["batch"] for s in sent] == [0, 20, 40]
    rep.flush()
    assert sent[-1]["batch"] == 49


def test_training_status_shape() -> None:
    status = build_training_status(
        {
            "epoch": 3,
            "batch": 0,
            "worldSize": 2,
            "metrics": {"loss": 0.5, "bad": "x"},
            "history": [{"epoch": i} for i in range(80)],
            "checkpoint": "s3://b/c",
            "resultsURI": "",
            "rank0Pod": "mnist-worker-1",
        },
        now=0.0,
    )
    assert status["rank0Pod"] == "mnist-worker-1"
    assert status["metrics"] == {"loss": 0.5}
    assert len(status["history"]) == 50
    assert status["history"][0] == {"epoch": 30, "metrics": {}}
    assert status["checkpoint"] == "s3://b/c"
    assert "resultsURI" not in status
    assert status["updatedAt"] == "1970-01-01T00:00:00Z"


def test_training_status_carries_the_world_and_when_it_was_confirmed() -> None:
    """worldPods/worldTime (docs/contract.md): the operator replaces a Ready worker missing from
    the world; a world without a time (no commit yet) is not reported."""
    world = {"worldPods": ["mnist-worker-0", "mnist-worker-2"], "worldTime": 1_800_000_000.5}
    status = build_training_status({"epoch": 1, **world}, now=1_800_000_010.0)
    assert status["worldPods"] == ["mnist-worker-0", "mnist-worker-2"]
    assert status["worldTime"] == "2027-01-15T08:00:00Z"
    unconfirmed = build_training_status({"epoch": 1, **world, "worldTime": 0.0}, now=1.0)
    assert "worldPods" not in unconfirmed
    assert "worldTime" not in unconfirmed
    assert "worldPods" not in build_training_status({"epoch": 1, "worldPods": []}, now=1.0)


def test_parse_progress_from_any_launch_rank() -> None:
    doc = {"epoch": 1}
    assert parse_progress(f"[0]<stdout>:ACCORDION_PROGRESS {json.dumps(doc)}") == doc
    assert parse_progress(f"ACCORDION_PROGRESS {json.dumps(doc)}") == doc
    # After a reset the current rank 0 may be a process horovodrun started as rank 1.
    assert parse_progress(f"[1]<stdout>:ACCORDION_PROGRESS {json.dumps(doc)}") == doc
    assert parse_progress("[0]<stdout>:epoch 1") is None
    assert parse_progress("[0]<stdout>:ACCORDION_PROGRESS {broken") is None


def test_secrets_never_reach_the_horovodrun_environment(tmp_path: Any) -> None:
    env = launcher_env(
        {"AWS_SECRET_ACCESS_KEY": "s", "AWS_ACCESS_KEY_ID": "k", "A": "1", "PATH": "/usr/bin"},
        tmp_path,
    )
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "AWS_ACCESS_KEY_ID" not in env
    assert env["PATH"].startswith(str(tmp_path))
    pairs = {
        f"ACCORDION_{s}_{k}": "x"
        for s in ("DATA", "RESULTS")
        for k in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
    }
    assert not set(launcher_env({**pairs, "PATH": "/usr/bin"}, tmp_path)) & set(pairs)


def test_a_hosting_launcher_keeps_its_worker_env_off_the_other_workers_command_lines(
    tmp_path: Any,
) -> None:
    """A launcher pod that hosts worker 0 has that worker's variables; horovodrun writes its
    environment after the sessions' on each ssh command line, so they would become every other
    worker's: its pod name in their world report, its GPU ids, its scratch dirs."""
    hosting = {
        "ACCORDION_POD_NAME": "r-launcher",
        "ACCORDION_WORKER_INDEX": "0",
        "ACCORDION_DATA_DIR": "/var/lib/accordion/data",
        "ACCORDION_POD_GPUS": "0",
        "ACCORDION_RUN_NAME": "r",
        "PATH": "/usr/bin",
    }
    env = launcher_env(hosting, tmp_path)
    assert not set(env) & set(WORKER_SESSION_ENV)
    assert env["ACCORDION_RUN_NAME"] == "r"


def test_every_host_over_ssh_leaves_the_rest_of_horovods_network_helpers() -> None:
    """With the launcher hosting worker 0, horovod's gloo launcher must ssh into the launcher's
    own pod address too (else it starts those processes itself, with the launcher's stripped
    environment): it sees no local address, and nothing else of its network module changes."""
    import horovod.runner.gloo_run as gloo_run
    from horovod.runner.util import network

    try:
        ssh_every_host()
        assert gloo_run.network.get_local_host_addresses() == set()
        assert gloo_run.network.resolve_host_address is network.resolve_host_address
        assert gloo_run.network.get_driver_ip is network.get_driver_ip
        assert network.get_local_host_addresses()  # the module itself is unchanged
    finally:
        gloo_run.network = network


def test_sshd_set_env_quotes_and_refuses_unsafe_values() -> None:
    assert sshd_set_env({"B": "2 3", "A": "1"}) == 'SetEnv "A=1" "B=2 3"'
    assert sshd_set_env({}) == ""
    with pytest.raises(TrainerError):
        sshd_set_env({"A": 'x"y'})


@pytest.mark.parametrize(("size", "lr"), [(1, 0.001), (2, 0.002), (4, 0.004), (0, 0.001)])
def test_learning_rate_scales_with_world_size(size: int, lr: float) -> None:
    assert scaled_lr(0.001, size) == pytest.approx(lr)


@pytest.mark.parametrize(
    ("step_s", "every"), [(0.01, 20), (0.2, 1), (1.5, 1), (0.0001, 100), (0.0, 1), (0.05, 4)]
)
def test_commit_interval_targets_a_fifth_of_a_second(step_s: float, every: int) -> None:
    assert decide_commit_every(step_s) == every


def test_host_poller_rewrites_the_hosts_file_only_on_change(tmp_path: Any) -> None:
    from accordion_trainer.incluster import HostPoller

    answers = [["10.0.0.1"], ["10.0.0.1"], ["10.0.0.1", "10.0.0.2"]]

    def fetch() -> list[str]:
        if not answers:
            raise RuntimeError("apiserver down")
        return answers.pop(0)

    hosts = tmp_path / "hosts"
    poller = HostPoller(hosts, fetch, interval_s=60)
    assert poller.poll_once() == ["10.0.0.1"]
    mtime = hosts.stat().st_mtime_ns
    poller.poll_once()
    assert hosts.stat().st_mtime_ns == mtime
    poller.poll_once()
    assert hosts.read_text() == "10.0.0.1:1\n10.0.0.2:1\n"
    # A failed poll keeps the last known list (horovod keeps training meanwhile).
    assert poller.poll_once() == ["10.0.0.1", "10.0.0.2"]


def test_static_host_sources(tmp_path: Any) -> None:
    from accordion_trainer.incluster import host_source, network_interface

    assert host_source({"ACCORDION_HOSTS": "127.0.0.2,127.0.0.3"})() == ["127.0.0.2", "127.0.0.3"]
    f = tmp_path / "hosts"
    f.write_text("127.0.0.5:1\n127.0.0.6:1\n")
    assert host_source({"ACCORDION_HOSTS": f"@{f}"})() == ["127.0.0.5", "127.0.0.6"]
    assert network_interface("127.0.0.1", {}) == "lo"
    assert network_interface("127.0.9.9", {}) == "lo"
    assert network_interface("10.1.2.3", {"ACCORDION_NETWORK_INTERFACE": "eth1"}) == "eth1"


def test_history_entries_take_the_crd_shape() -> None:
    status = build_training_status(
        {"epoch": 2, "history": [{"epoch": 1, "loss": 0.5, "val_accuracy": 0.9}]}, now=0.0
    )
    assert status["history"] == [{"epoch": 1, "metrics": {"loss": 0.5, "val_accuracy": 0.9}}]


def test_a_hosting_launcher_offers_no_host_until_its_own_serves() -> None:
    # Horovod ranks hosts in the order it first sees them: worker 1 warm first must not be rank 0
    assert led_by(["10.0.0.11"], "10.0.0.10") == []
    assert led_by(["10.0.0.10", "10.0.0.11"], "10.0.0.10") == ["10.0.0.10", "10.0.0.11"]
    assert led_by(["10.0.0.11"], None) == ["10.0.0.11"]  # a launcher of its own waits for none
    assert led_by([], "10.0.0.10") == []


def test_a_hosting_launcher_whose_own_host_left_the_world_fails() -> None:
    world = {"epoch": 3, "worldPods": ["r-launcher", "r-worker-1"]}
    assert not left_world(world, "r-launcher")
    assert left_world({"epoch": 3, "worldPods": ["r-worker-1"]}, "r-launcher")
    assert not left_world({"epoch": 3, "worldPods": ["r-worker-1"]}, None)  # own launcher
    assert not left_world({"resultsURI": "s3://b/p"}, "r-launcher")  # no world in the report


def test_hosts_found_together_are_ranked_in_discovery_order() -> None:
    # Horovod itself iterates a set here: the launcher's own host could land anywhere
    found = ["10.0.0.10", "10.0.0.9", "10.0.0.11"]
    assert ordered_hosts(set(found), [], found) == found
    # an older host keeps its rank; a new one goes after it, wherever discovery lists it
    assert ordered_hosts({"10.0.0.10", "10.0.0.9"}, ["10.0.0.9"], ["10.0.0.10", "10.0.0.9"]) == [
        "10.0.0.9",
        "10.0.0.10",
    ]
    assert ordered_hosts({"10.0.0.10"}, ["10.0.0.9"], ["10.0.0.10"]) == ["10.0.0.10"]


def test_horovods_host_manager_ranks_in_the_discovery_scripts_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from horovod.runner.elastic import discovery

    # what rank_in_discovery_order replaces, put back after the test
    monkeypatch.setattr(
        discovery.HostDiscoveryScript,
        "find_available_hosts_and_slots",
        discovery.HostDiscoveryScript.find_available_hosts_and_slots,
    )
    monkeypatch.setattr(
        discovery.HostManager,
        "order_available_hosts",
        staticmethod(discovery.HostManager.order_available_hosts),
    )
    rank_in_discovery_order()
    script = discovery.HostDiscoveryScript("unused", 1)
    for printed, order in (
        ("10.0.0.10:1\n10.0.0.9:2\n", ["10.0.0.10", "10.0.0.9"]),
        ("10.0.0.9:2\n10.0.0.10:1\n", ["10.0.0.9", "10.0.0.10"]),
    ):
        monkeypatch.setattr(script, "_execute_discovery_script", lambda printed=printed: printed)
        manager = discovery.HostManager(script)
        manager.update_available_hosts()
        assert manager.current_hosts.host_assignment_order == order
        assert manager.current_hosts.host_slots == {"10.0.0.10": 1, "10.0.0.9": 2}


def test_a_launcher_alone_in_its_run_makes_its_own_key_pair(tmp_path: Path) -> None:
    assert alone({"ACCORDION_WORKER_INDEX": "0", "ACCORDION_MAX_WORKERS": "1"})
    assert not alone({"ACCORDION_WORKER_INDEX": "0", "ACCORDION_MAX_WORKERS": "2"})
    assert not alone({"ACCORDION_MAX_WORKERS": "1"})  # a launcher of its own
    ssh_dir = own_key_pair(tmp_path / "own-ssh")
    assert ssh_dir.stat().st_mode & 0o777 == 0o700
    public = (ssh_dir / "id_ed25519.pub").read_text()
    assert (ssh_dir / "authorized_keys").read_text() == public
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(ssh_dir / "id_ed25519")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert derived.split()[:2] == public.split()[:2]
    # what the hosted worker's sshd and the launcher's ssh client read, as from the Secret
    prepare_sshd(ssh_dir, tmp_path / "sshd", "127.0.0.1", 2222, {})
    assert (tmp_path / "sshd" / "authorized_keys").read_text() == public
    prepare_ssh_client(ssh_dir, tmp_path / "client", 2222)
    # a restarted launcher makes a new pair
    assert (own_key_pair(ssh_dir) / "id_ed25519.pub").read_text() != public
