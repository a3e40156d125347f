"""benchmarks.elastic_replay's pure analysis: which of the simulator's rescales a stack with a
given latency would carry out, by hand."""

import pytest

from benchmarks.elastic.sim import SimConfig, SimResult, simulate
from benchmarks.elastic.speedup import ModelClass
from benchmarks.elastic.trace import Job
from benchmarks.elastic_replay import visible_rescales


def result(changes: dict[int, list[tuple[float, int, int]]]) -> SimResult:
    return SimResult("elastic", 4, [], [], 0.0, 0.0, 0, 0, grant_changes=changes)


@pytest.mark.parametrize(
    ("changes", "window", "expected"),
    [
        # admission and two rescales far apart: both seen
        ([(0.0, 0, 2), (100.0, 2, 4), (200.0, 4, 2)], 10.0, (2, 2)),
        # a grow taken back 5 s later: neither reaches the trainer
        ([(0.0, 0, 2), (100.0, 2, 4), (105.0, 4, 2)], 10.0, (2, 0)),
        # a grow in two steps close together: one rescale from 2 to 4
        ([(0.0, 0, 2), (100.0, 2, 3), (104.0, 3, 4)], 10.0, (2, 1)),
        # a rescale right after admission merges into the admission
        ([(0.0, 0, 2), (3.0, 2, 1)], 10.0, (1, 0)),
    ],
)
def test_changes_closer_than_the_window_merge(
    changes: list[tuple[float, int, int]], window: float, expected: tuple[int, int]
) -> None:
    assert visible_rescales(result({0: changes}), window) == expected


def test_the_simulator_records_every_grant_change() -> None:
    # A (1..4) alone at 4; B (2 GPUs) at 50 takes 2 of them; B ends at 150 and A grows back
    lin = {"lin": ModelClass("lin", alpha=0.0, grow_pause_s=5.0, shrink_pause_s=2.0)}
    jobs = [Job(0, 0, max=4, min=1, duration=100, model="lin"), Job(1, 50, 2, 2, 100, "lin")]
    res = simulate(jobs, lin, SimConfig(4, gpus_per_node=4), "elastic")
    assert res.grant_changes[0] == [(0.0, 0, 4), (50.0, 4, 2), (150.0, 2, 4)]
    assert res.grant_changes[1] == [(50.0, 0, 2)]
    assert visible_rescales(res, 1.0) == (2, 2)
