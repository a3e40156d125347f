"""accordion_dev.playact.PlayedRun: the played launcher's training by the speedup model, by hand
(work, pauses per rescale, the start at the minimum, the exact finish)."""

import pytest

from accordion_dev.playact import PlayedRun


def linear(n: int) -> float:
    return float(n)


def run(**kw: object) -> PlayedRun:
    args: dict[str, object] = {
        "name": "r",
        "work": 100.0,
        "ref_workers": 4,
        "min_workers": 2,
        "speedup": linear,
        "grow_pause": 5.0,
        "shrink_pause": 1.0,
        "epochs": 4,
    }
    return PlayedRun(**{**args, **kw})  # type: ignore[arg-type]


def test_waits_for_the_minimum_then_trains_at_the_model_rate() -> None:
    r = run()
    assert not r.observe(0.0, 1)  # below --min-np: the launcher keeps waiting
    assert r.started is None
    assert r.observe(10.0, 2)  # the world forms at 2 of 4: half the reference rate, no pause
    assert (r.started, r.world, r.rescales) == (10.0, 2, 0)
    r.observe(30.0, 2)
    assert r.done == pytest.approx(10.0)
    assert r.epoch == 0
    assert r.finishes_at(30.0) == pytest.approx(30.0 + 90.0 / 0.5)


def test_a_grow_pauses_then_trains_faster_and_finishes_exactly() -> None:
    r = run()
    r.observe(0.0, 2)
    r.observe(40.0, 2)  # 20 done
    assert r.epoch == 0
    assert r.observe(40.0, 4)  # grow: 5 s with nothing done, then the full rate
    assert (r.grows, r.shrinks) == (1, 0)
    assert not r.training(42.0)
    r.observe(45.0, 4)
    assert r.done == pytest.approx(20.0)
    r.observe(85.0, 4)
    assert r.done == pytest.approx(60.0)
    assert r.epoch == 2
    r.observe(200.0, 4)  # the last 40 ran out at 125, not at the poll
    assert r.finished == pytest.approx(125.0)
    assert r.done == r.work
    assert r.epoch == 4
    assert not r.observe(300.0, 1)  # a finished run no longer changes


def test_a_shrink_pauses_for_the_shrink_pause_and_slows_down() -> None:
    r = run()
    r.observe(0.0, 4)
    assert r.observe(10.0, 3)  # 10 done; 1 s pause, then 3/4 of the rate
    r.observe(21.0, 3)
    assert r.done == pytest.approx(10.0 + 10 * 0.75)
    assert (r.grows, r.shrinks, r.rescales) == (0, 1, 1)


def test_losing_every_worker_is_a_preemption_and_coming_back_costs_a_grow_pause() -> None:
    r = run()
    r.observe(0.0, 2)
    assert r.observe(10.0, 0)
    assert (r.preemptions, r.world) == (1, 0)
    r.observe(50.0, 0)
    assert r.done == pytest.approx(5.0)  # nothing while preempted
    assert r.observe(50.0, 2)
    r.observe(60.0, 2)
    assert r.done == pytest.approx(5.0 + 5 * 0.5)
    assert r.rescales == 0  # neither a grow nor a shrink of a training world


def test_amdahl_scaling_relative_to_the_reference_size() -> None:
    def amdahl(n: int) -> float:
        return n / (1 + 0.2 * (n - 1))

    r = run(speedup=amdahl, min_workers=1, grow_pause=0.0)
    r.observe(0.0, 1)
    r.observe(10.0, 1)
    assert r.done == pytest.approx(10.0 * amdahl(1) / amdahl(4))


@pytest.mark.parametrize(
    "bad", [{"work": 0.0}, {"ref_workers": 0}, {"min_workers": 0}, {"epochs": 0}]
)
def test_bad_parameters_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        run(**bad)


def test_a_count_of_ready_workers_is_taken_once_it_has_held_for_settle() -> None:
    r = run(settle=0.5)
    assert not r.observe(0.0, 2)  # Ready pods trickle in: 2, then 4 within the settle time
    assert not r.observe(0.3, 4)
    assert r.started is None
    assert r.observe(0.8, 4)  # one world of 4: a start, not a start and a grow
    assert (r.started, r.world, r.grows) == (0.8, 4, 0)
    assert not r.observe(1.0, 3)  # a blip shorter than the settle time is no rescale
    assert not r.observe(1.2, 4)
    assert r.rescales == 0
