"""Several GPUs per worker (issue 17): slots per pod, which ids name a pod's GPUs, and the one
each training process keeps (accordion_trainer.gpus, pure functions of the environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from accordion_trainer.errors import TrainerError
from accordion_trainer.gpus import (
    pin_process,
    pod_gpu_ids,
    process_gpu_env,
    slots_per_worker,
)


@pytest.mark.parametrize(("gpus", "slots"), [(None, 1), ("0", 1), ("1", 1), ("4", 4)])
def test_a_worker_has_one_slot_per_gpu_and_one_without_gpus(gpus: str | None, slots: int) -> None:
    env = {} if gpus is None else {"ACCORDION_GPUS_PER_WORKER": gpus}
    assert slots_per_worker(env) == slots


def test_a_malformed_gpu_count_is_a_training_error() -> None:
    with pytest.raises(TrainerError, match="ACCORDION_GPUS_PER_WORKER"):
        slots_per_worker({"ACCORDION_GPUS_PER_WORKER": "two"})


@pytest.mark.parametrize(
    ("env", "ids"),
    [
        # process nodes (and runtimes that set it): the ids as given
        ({"ACCORDION_GPUS_PER_WORKER": "2", "CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"]),
        # the NVIDIA device plugin's default: UUIDs, which CUDA accepts as they are
        (
            {"ACCORDION_GPUS_PER_WORKER": "2", "NVIDIA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"},
            ["GPU-aa", "GPU-bb"],
        ),
        # host indices or `all`: the container's devices are numbered from 0
        ({"ACCORDION_GPUS_PER_WORKER": "2", "NVIDIA_VISIBLE_DEVICES": "5,7"}, ["0", "1"]),
        ({"ACCORDION_GPUS_PER_WORKER": "3", "NVIDIA_VISIBLE_DEVICES": "all"}, ["0", "1", "2"]),
        ({"ACCORDION_GPUS_PER_WORKER": "1"}, ["0"]),
        # no GPUs requested: none, whatever the runtime exposes
        ({"ACCORDION_GPUS_PER_WORKER": "0", "NVIDIA_VISIBLE_DEVICES": "all"}, []),
        ({"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}, []),
    ],
)
def test_pod_gpu_ids(env: dict[str, str], ids: list[str]) -> None:
    assert pod_gpu_ids(env) == ids


@pytest.mark.parametrize(("local_rank", "gpu"), [("0", "GPU-aa"), ("1", "GPU-bb")])
def test_each_process_keeps_the_gpu_at_its_local_rank(local_rank: str, gpu: str) -> None:
    env = {"ACCORDION_POD_GPUS": "GPU-aa,GPU-bb", "HOROVOD_LOCAL_RANK": local_rank}
    assert process_gpu_env(env) == {
        "CUDA_VISIBLE_DEVICES": gpu,
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",
    }


def test_a_process_of_a_pod_without_gpus_sees_none() -> None:
    assert process_gpu_env({"ACCORDION_POD_GPUS": "", "HOROVOD_LOCAL_RANK": "0"}) == {
        "CUDA_VISIBLE_DEVICES": ""
    }


def test_outside_a_worker_pod_nothing_is_pinned() -> None:
    assert process_gpu_env({"CUDA_VISIBLE_DEVICES": "0,1", "HOROVOD_LOCAL_RANK": "1"}) == {}


def test_more_slots_than_gpus_is_refused() -> None:
    with pytest.raises(TrainerError, match="local rank 2 but the pod has 2 GPU"):
        process_gpu_env({"ACCORDION_POD_GPUS": "0,1", "HOROVOD_LOCAL_RANK": "2"})


def test_pin_process_updates_the_environment_and_logs_its_gpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {
        "ACCORDION_POD_GPUS": "0,1",
        "HOROVOD_RANK": "3",
        "HOROVOD_LOCAL_RANK": "1",
        "ACCORDION_POD_NAME": "run-worker-1",
        "CUDA_VISIBLE_DEVICES": "",  # the launcher's, had horovodrun forwarded it
    }
    assert pin_process(env) == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert "rank 3 local_rank 1 pod run-worker-1 gpu 1" in capsys.readouterr().out


def test_host_poller_and_discovery_give_each_pod_its_slots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from accordion_trainer.incluster import HostPoller, cmd_discover

    hosts = tmp_path / "hosts"
    HostPoller(hosts, lambda: ["10.0.0.1", "10.0.0.2"], interval_s=60, slots=2).poll_once()
    assert hosts.read_text() == "10.0.0.1:2\n10.0.0.2:2\n"
    capsys.readouterr()  # the poller's own log line
    monkeypatch.setenv("ACCORDION_HOSTS", "10.0.0.1,10.0.0.2")
    monkeypatch.setenv("ACCORDION_GPUS_PER_WORKER", "4")
    cmd_discover(argparse.Namespace())
    assert capsys.readouterr().out == "10.0.0.1:4\n10.0.0.2:4\n"
