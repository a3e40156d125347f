"""A process node's host CPU list (`ClusterConfig.process_node_cpus`): parsed before the agent
starts, so a bad list is a clear error instead of a node that never turns Ready."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from accordion_dev.nodeagent import agent_argv, host_cpu_set

FIRST = min(os.sched_getaffinity(0))


def test_a_list_names_its_cpus() -> None:
    assert host_cpu_set(str(FIRST)) == {FIRST}
    assert host_cpu_set(f"{FIRST}-{FIRST}") == {FIRST}


def test_the_agent_runs_under_taskset_only_when_pinned() -> None:
    argv = agent_argv(Path("kc"), "n", 1, Path("s"), 0, host_cpus=f" {FIRST}")
    assert argv[:3] == ["taskset", "-c", str(FIRST)]
    assert agent_argv(Path("kc"), "n", 1, Path("s"), 0)[0] != "taskset"


@pytest.mark.parametrize("bad", ["", "x", "1-", "0;1", "-1"])
def test_a_malformed_list_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not a CPU list|usable CPUs"):
        host_cpu_set(bad)


def test_a_cpu_this_machine_lacks_is_refused_naming_the_usable_ones() -> None:
    missing = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ValueError, match="usable CPUs here are"):
        host_cpu_set(str(missing))
