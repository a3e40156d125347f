"""The Node and Lease objects a process node publishes."""

from __future__ import annotations

import pytest

from accordion_dev.nodeagent.node import (
    NodeConfig,
    build_lease,
    build_node,
    build_node_status,
    parse_taint,
)


def test_node_carries_gpu_labels_capacity_and_taints() -> None:
    cfg = NodeConfig(
        "proc-1", 1, gpus=2, taints=(parse_taint("nvidia.com/gpu=present:NoSchedule"),)
    )
    node = build_node(cfg)
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["kubernetes.io/hostname"] == "proc-1"
    assert labels["accordion.dev/process-node"] == "true"
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    status = build_node_status(cfg, "boot")["status"]
    assert status["allocatable"]["nvidia.com/gpu"] == "2"
    assert status["capacity"] == {
        "cpu": "16",
        "memory": "64Gi",
        "pods": "110",
        "nvidia.com/gpu": "2",
    }
    assert {"type": "InternalIP", "address": "127.101.0.1"} in status["addresses"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_taint_syntax() -> None:
    assert parse_taint("k:NoExecute") == {"key": "k", "effect": "NoExecute"}
    with pytest.raises(ValueError, match="NoSchedule"):
        parse_taint("k=v:Sometimes")


def test_lease_is_owned_by_the_node_and_renewed_now() -> None:
    lease = build_lease("proc-0", "uid-1")
    assert lease["metadata"]["namespace"] == "kube-node-lease"
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert lease["spec"]["holderIdentity"] == "proc-0"
    assert lease["spec"]["renewTime"].endswith("Z")
    assert "." in lease["spec"]["renewTime"]  # MicroTime
