"""Pod IP and GPU allocation on a process node."""

from __future__ import annotations

import pytest

from accordion_dev.nodeagent.alloc import (
    AllocationError,
    GpuAllocator,
    IpAllocator,
    node_ip,
    pod_gpu_plan,
    split_devices,
    visible_devices,
)


def test_pod_ips_are_unique_per_live_pod_and_inside_the_node_range() -> None:
    ips = IpAllocator(node_index=3)
    got = [ips.allocate(f"uid-{i}") for i in range(600)]
    assert len(set(got)) == 600
    assert all(ip.startswith("127.103.") for ip in got)
    assert node_ip(3) == "127.103.0.1"
    assert node_ip(3) not in got
    assert all(not ip.endswith((".0", ".255")) for ip in got)


def test_the_same_pod_keeps_its_ip_and_a_freed_ip_is_reused_late() -> None:
    ips = IpAllocator(node_index=0)
    a = ips.allocate("a")
    assert ips.allocate("a") == a
    ips.release("a")
    assert ips.allocate("b") != a  # the next address, not the just-freed one


def test_ip_allocator_wraps_around_and_refuses_when_full() -> None:
    ips = IpAllocator(node_index=0, size=3)
    first = [ips.allocate(u) for u in "abc"]
    with pytest.raises(AllocationError):
        ips.allocate("d")
    ips.release("b")
    assert ips.allocate("d") == first[1]


def test_gpus_are_never_shared_between_pods() -> None:
    gpus = GpuAllocator(count=4)
    a = gpus.allocate("a", 2)
    b = gpus.allocate("b", 1)
    assert not set(a) & set(b)
    with pytest.raises(AllocationError, match="needs 2"):
        gpus.allocate("c", 2)
    gpus.release("a")
    c = gpus.allocate("c", 2)
    assert not set(c) & set(b)
    assert sorted(c + b) == [0, 1, 2]


def test_gpu_assignments_survive_a_restart_through_the_recorded_state() -> None:
    before = GpuAllocator(count=2)
    held = before.allocate("a", 1)
    after = GpuAllocator(count=2, assigned=dict(before.assigned))  # what the state file restores
    assert after.allocate("a", 1) == held
    assert after.allocate("b", 1) != held


def test_pod_gpu_plan_sums_app_containers_and_lets_init_containers_reuse() -> None:
    spec = {
        "initContainers": [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "3"}}}],
        "containers": [
            {"name": "a", "resources": {"limits": {"nvidia.com/gpu": 1}}},
            {"name": "b", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
            {"name": "c"},
        ],
    }
    total, per = pod_gpu_plan(spec)
    assert total == 3
    split = split_devices([5, 6, 7], spec, per)
    assert split == {"a": [5], "b": [6], "c": [], "i": [5, 6, 7]}
    assert visible_devices(split["i"]) == "5,6,7"
    assert visible_devices([]) == ""
