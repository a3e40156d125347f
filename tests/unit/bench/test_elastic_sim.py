"""benchmarks.elastic.sim: hand-computed tiny traces, work conservation, no over-allocation,
and the shortcuts (ticks, pods, one pass) giving what the slow faithful way gives."""

import dataclasses

import pytest

from benchmarks.elastic.sim import POLICIES, SimConfig, SimResult, simulate
from benchmarks.elastic.speedup import ModelClass
from benchmarks.elastic.trace import Job, generate

LINEAR = {"lin": ModelClass("lin", alpha=0.0, grow_pause_s=5.0, shrink_pause_s=2.0)}
MIXED = {
    "lin": LINEAR["lin"],
    "poor": ModelClass("poor", alpha=0.5, grow_pause_s=5.0, shrink_pause_s=1.0),
}


def job(i: int, arrival: float, gpus: int, duration: float, lo: int | None = None) -> Job:
    return Job(i, arrival, max=gpus, min=gpus if lo is None else lo, duration=duration, model="lin")


def ends(res: SimResult) -> dict[int, float]:
    return {j.id: j.end for j in res.jobs}


def test_static_gang_at_max_by_hand() -> None:
    # 4 GPUs. A holds 3 from 0 to 100; B (4 GPUs) waits for all four; C (1 GPU, 200 s) fits the
    # free GPU at 2 and the allocator's best-effort FIFO starts it: B waits for C too.
    jobs = [job(0, 0, 3, 100), job(1, 1, 4, 10), job(2, 2, 1, 200)]
    res = simulate(jobs, LINEAR, SimConfig(4, gpus_per_node=4), "static-max")
    assert ends(res) == {0: 100, 1: 212, 2: 202}
    assert [j.start for j in res.jobs] == [0, 202, 2]
    assert res.summary()["rescales_per_job"] == 0


def test_fifo_easy_backfill_by_hand() -> None:
    # Same trace: B, head of the queue, is promised t=100 (when A ends); C would run past it and
    # there are no spare GPUs then, so C is not backfilled: B 100-110, C 110-310.
    jobs = [job(0, 0, 3, 100), job(1, 1, 4, 10), job(2, 2, 1, 200)]
    res = simulate(jobs, LINEAR, SimConfig(4, gpus_per_node=4), "fifo-easy")
    assert ends(res) == {0: 100, 1: 110, 2: 310}
    # a short job that ends before the reservation is backfilled
    jobs[2] = job(2, 2, 1, 50)
    res = simulate(jobs, LINEAR, SimConfig(4, gpus_per_node=4), "fifo-easy")
    assert ends(res) == {0: 100, 1: 110, 2: 52}


def test_elastic_shrinks_for_a_newcomer_by_hand() -> None:
    # A (1..4 GPUs, 400 GPU-s) runs alone at 4; B (2 GPUs) arrives at 50 when A is half done and
    # out of its cooldown: A shrinks to 2 (a 2 s pause) and does 2 GPU-s/s from 52. B ends at
    # 150, 2 s before A would; A grows back to 4 (a 5 s pause) for its last 4 GPU-s: it ends at
    # 156, later than the 152 of staying at 2 (the allocator does not know a run is nearly done).
    jobs = [job(0, 0, 4, 100, lo=1), job(1, 50, 2, 100)]
    res = simulate(jobs, LINEAR, SimConfig(4, gpus_per_node=4), "elastic")
    assert ends(res) == {0: pytest.approx(156.0), 1: pytest.approx(150.0)}
    a = res.jobs[0]
    assert (a.rescales, a.shrinks, a.grows) == (2, 1, 1)


def test_elastic_grows_when_gpus_free_by_hand() -> None:
    # B holds 2 GPUs from 0 to 20; A (1..4) starts at 1 on the other 2; at 20 A grows to 4,
    # pauses 5 s, then does the remaining 400 - 38 GPU-s at 4 GPUs/s.
    jobs = [job(0, 0, 2, 20), job(1, 1, 4, 100, lo=1)]
    res = simulate(jobs, LINEAR, SimConfig(4, gpus_per_node=4), "elastic")
    assert ends(res) == {0: 20, 1: pytest.approx(20 + 5 + 362 / 4)}
    assert res.jobs[1].grows == 1


def test_a_job_allowed_past_its_request_runs_faster_alone() -> None:
    # asked for 2 GPUs for 100 s, may use 4: alone on 4 GPUs it takes 50 s at linear scaling;
    # static gang runs it at its request
    wide = [Job(0, 0, max=4, min=1, duration=100, model="lin", requested=2)]
    assert simulate(wide, LINEAR, SimConfig(4, gpus_per_node=4), "elastic").jobs[0].end == 50
    assert simulate(wide, LINEAR, SimConfig(4, gpus_per_node=4), "static-max").jobs[0].end == 100
    assert simulate(wide, LINEAR, SimConfig(4, gpus_per_node=4), "fifo-easy").jobs[0].end == 100


def test_static_min_runs_slower_by_the_model() -> None:
    # requested 4, min 1: at 1 worker the job takes S(4)/S(1) times its duration
    poor = {"lin": MIXED["poor"]}
    res = simulate([job(0, 0, 4, 100, lo=1)], poor, SimConfig(8), "static-min")
    assert res.jobs[0].end == pytest.approx(100 * poor["lin"].speedup(4))


def small_trace(seed: int = 5) -> list[Job]:
    """A busy little trace: 16 GPUs, durations and gaps shrunk 100x (every policy queues)."""
    jobs = generate(16, 80, seed, {"lin": 0.5, "poor": 0.5}, load=1.3)
    return [
        dataclasses.replace(j, arrival=j.arrival / 100, duration=j.duration / 100) for j in jobs
    ]


@pytest.mark.parametrize("policy", POLICIES)
def test_work_is_conserved_and_gpus_never_over_allocated(policy: str) -> None:
    jobs = small_trace()
    res = simulate(jobs, MIXED, SimConfig(16), policy)
    assert len(res.jobs) == len(jobs)
    for rec in res.jobs:
        assert rec.done == pytest.approx(rec.work, rel=1e-6), rec
        assert rec.start >= rec.arrival
        assert rec.end > rec.start
    assert res.max_allocated <= 16
    assert all(0 <= alloc <= 16 and 0 <= busy <= alloc + 1e-9 for _, alloc, busy in res.timeline)
    # the allocated GPU-seconds are at least the work (efficiency <= 1)
    assert res.allocated_gpu_s >= sum(j.work for j in jobs) * 0.999 or policy != "static-max"


def test_a_static_job_never_rescales_and_finishes_in_its_duration() -> None:
    jobs = small_trace()
    res = simulate(jobs, MIXED, SimConfig(16), "static-max")
    by_id = {j.id: j for j in jobs}
    for rec in res.jobs:
        assert rec.rescales == 0
        assert rec.end - rec.start == pytest.approx(by_id[rec.id].duration)


def test_elastic_rescales_and_is_deterministic() -> None:
    jobs = small_trace()
    one = simulate(jobs, MIXED, SimConfig(16), "elastic")
    assert sum(j.rescales for j in one.jobs) > 0
    assert one.jobs == simulate(jobs, MIXED, SimConfig(16), "elastic").jobs


@pytest.mark.parametrize(
    "faithful",
    [
        {"every_tick": True},  # decide at every resync tick, not only where a cooldown ends
        {"with_pods": True},  # pass the runs' own pods too
        {"settle": True},  # ask again at the same instant until nothing changes
        {"always_allocate": True},  # the allocator even when every cap fits
    ],
)
def test_shortcuts_change_nothing(faithful: dict[str, bool]) -> None:
    jobs = small_trace(seed=9)
    fast = simulate(jobs, MIXED, SimConfig(16), "elastic")
    slow = simulate(jobs, MIXED, SimConfig(16, **faithful), "elastic")
    # the same decisions; the finish times up to float rounding (more integration steps)
    assert [(j.id, j.start, j.rescales, j.grows) for j in fast.jobs] == [
        (j.id, j.start, j.rescales, j.grows) for j in slow.jobs
    ]
    assert [j.end for j in fast.jobs] == pytest.approx([j.end for j in slow.jobs], rel=1e-9)
    assert slow.repass_changes == 0
    if faithful.get("every_tick"):
        assert slow.decisions > fast.decisions
    if faithful.get("always_allocate"):
        assert fast.trivial_decisions > 0


def test_cooldown_keeps_a_grown_run_from_being_trimmed_at_once() -> None:
    # A (1..4) grows to 4 at 20 when B ends; C (2 GPUs) arrives at 30, within A's cooldown:
    # C's minimum is still admitted (cooldown never blocks a minimum), A keeps what is left.
    jobs = [job(0, 0, 2, 20), job(1, 1, 4, 1000, lo=1), job(2, 30, 2, 10)]
    res = simulate(jobs, LINEAR, SimConfig(4, gpus_per_node=4), "elastic")
    c = res.jobs[2]
    assert c.start == 30
    assert c.end == 40
    assert res.jobs[1].shrinks == 1
    assert res.jobs[1].grows == 2


def test_start_and_release_delays_by_hand() -> None:
    # The real stack's delays (benchmarks.elastic_replay measures them): A (4 GPUs, 100 s)
    # admitted at 0 trains from 10; B (4 GPUs) waits for A's GPUs, which are granted again 5 s
    # after A ends (110 + 5), and B trains 10 s later, from 125 to 135.
    jobs = [job(0, 0, 4, 100), job(1, 1, 4, 10)]
    cfg = SimConfig(4, gpus_per_node=4, start_delay_s=10.0, release_delay_s=5.0)
    for policy in ("static-max", "elastic"):
        res = simulate(jobs, LINEAR, cfg, policy)
        assert ends(res) == {0: 110.0, 1: 135.0}
        assert [j.start for j in res.jobs] == [10.0, 125.0]
        # the held GPUs count as allocated, not busy: 4 x 135 allocated, 4 x (100 + 10) busy
        assert res.allocated_gpu_s == pytest.approx(4 * 135.0)
        assert res.busy_gpu_s == pytest.approx(4 * 110.0)


def test_released_gpus_are_granted_to_an_elastic_run_only_once_released() -> None:
    # A (1..4) runs at 2 next to B (2 GPUs, 50 s); when B ends at 50 its GPUs come back at 80:
    # A grows then, not at 50 (a 5 s pause with nothing done), and ends at 445: 160 of its
    # 1,600 GPU-s done at 2 by 80, the rest at 4
    jobs = [job(0, 0, 2, 50), job(1, 0, 4, 400, lo=2)]
    cfg = SimConfig(4, gpus_per_node=4, release_delay_s=30.0)
    res = simulate(jobs, LINEAR, cfg, "elastic")
    timeline = [(t, busy) for t, _, busy in res.timeline if t >= 50]
    assert timeline == [(50, 2), (80, 0), (85, 4), (445, 0)]
    assert res.jobs[1].grows == 1
