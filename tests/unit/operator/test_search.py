"""The search: sampler reconstruction (restart safety, determinism, no duplicates) and the
pruning decisions, on studies rebuilt from observed trials."""

from __future__ import annotations

import pytest
from experiment_factory import make_exp

from accordion_operator.api.experiment import ExperimentSpec
from accordion_operator.experiment.search import (
    Suggestion,
    TrialRecord,
    build_study,
    distributions,
    grid_size,
    grid_values,
    max_trials,
    suggest,
    trial_seed,
)

LR = {"name": "learning_rate", "type": "double", "min": 1e-4, "max": 1e-1, "log": True}
UNITS = {"name": "units", "type": "int", "min": 32, "max": 256, "step": 32}
OPT = {"name": "optimizer", "type": "categorical", "values": ["adam", "sgd", "rmsprop"]}


def spec(**kw: object) -> ExperimentSpec:
    return make_exp(**kw).spec


def ask(sp: ExperimentSpec, trials: list[TrialRecord], count: int) -> list[Suggestion]:
    return suggest(build_study(sp, trials, "team-a/exp"), count)


def running(s: Suggestion) -> TrialRecord:
    return TrialRecord(s.number, s.params, "running", grid_id=s.grid_id)


def complete(s: Suggestion, value: float) -> TrialRecord:
    return TrialRecord(s.number, s.params, "complete", value, ((1, value),), s.grid_id)


@pytest.mark.parametrize("algorithm", ["random", "tpe", "grid"])
def test_asking_together_equals_asking_across_a_restart(algorithm: str) -> None:
    """Trials 0..3 asked in one pass == asked one per pass, each pass starting from a study
    rebuilt from the children alone (what an operator restart between creations sees)."""
    params = [
        LR | {"step": None} if algorithm != "grid" else LR | {"log": False, "step": 0.01},
        UNITS,
        OPT,
    ]
    sp = spec(algorithm=algorithm, parameters=params, maxRuns=20, parallelism=4)
    together = ask(sp, [], 4)
    one_by_one: list[Suggestion] = []
    for _ in range(4):
        (s,) = ask(sp, [running(x) for x in one_by_one], 1)
        one_by_one.append(s)
    assert together == one_by_one
    assert [s.number for s in together] == [0, 1, 2, 3]


def test_same_seed_same_suggestions_other_seed_others() -> None:
    a = ask(spec(seed=1), [], 5)
    assert a == ask(spec(seed=1), [], 5)
    assert [s.params for s in a] != [s.params for s in ask(spec(seed=2), [], 5)]


def test_tpe_after_results_is_deterministic_and_uses_them() -> None:
    """With finished trials (the model-based phase), the next suggestions depend only on the
    observations: same history -> same suggestions, asked together or across a restart."""
    sp = spec(algorithm="tpe", tpeStartupRuns=4, maxRuns=30, parallelism=2)
    history: list[TrialRecord] = []
    for s in ask(sp, [], 8):
        lr = float(s.params["learning_rate"])
        history.append(complete(s, -abs(lr - 0.01)))
    pair = ask(sp, history, 2)
    (first,) = ask(sp, history, 1)
    (second,) = ask(sp, [*history, running(first)], 1)
    assert pair == [first, second]
    assert [s.number for s in pair] == [8, 9]
    # TPE models the results: a different history gives different suggestions
    flipped = [TrialRecord(t.number, t.params, "complete", -(t.value or 0), ()) for t in history]
    assert ask(sp, flipped, 2) != pair


def test_suggestions_name_the_sampler_that_made_them() -> None:
    """`tpe-startup` exactly while TPE still draws at random: fewer than tpeStartupRuns trials
    complete or pruned (Optuna's rule; running and failed ones do not count). The startup
    draws are the random sampler's for the same seed, the modelled ones are not."""
    sp = spec(algorithm="tpe", tpeStartupRuns=2, maxRuns=10, parallelism=4)
    first = ask(sp, [], 3)
    assert [s.sampler for s in first] == ["tpe-startup"] * 3
    random_sp = spec(algorithm="random", maxRuns=10, parallelism=4)
    assert [s.params for s in first] == [s.params for s in ask(random_sp, [], 3)]
    failed = TrialRecord(1, first[1].params, "failed")
    one_done = [complete(first[0], 0.5), failed, running(first[2])]
    (s,) = ask(sp, one_done, 1)
    assert s.sampler == "tpe-startup"
    assert s.params == ask(random_sp, one_done, 1)[0].params
    pruned = TrialRecord(1, first[1].params, "pruned", None, ((1, 0.1),))
    two_done = [complete(first[0], 0.5), pruned, running(first[2])]
    modelled = ask(sp, two_done, 2)
    assert [s.sampler for s in modelled] == ["tpe", "tpe"]
    assert [s.params for s in modelled] != [s.params for s in ask(random_sp, two_done, 2)]
    assert {s.sampler for s in ask(random_sp, [], 2)} == {"random"}
    grid_sp = spec(algorithm="grid", parameters=[UNITS], maxRuns=4)
    assert {s.sampler for s in ask(grid_sp, [], 2)} == {"grid"}


def test_grid_enumerates_every_point_once_across_restarts() -> None:
    sp = spec(algorithm="grid", parameters=[UNITS, OPT], maxRuns=100, parallelism=3)
    assert grid_size(sp) == 8 * 3
    assert max_trials(sp) == 24
    seen: list[Suggestion] = []
    while len(seen) < 24:
        # finish some, keep some running, "restart" (rebuild) every pass
        records = [complete(s, 0.5) if s.number % 2 else running(s) for s in seen]
        seen += ask(sp, records, 3)
    points = {(s.params["units"], s.params["optimizer"]) for s in seen}
    assert len(points) == 24, "a grid point was repeated or skipped"
    assert {s.grid_id for s in seen} == set(range(24))


def test_a_missing_trial_keeps_its_number() -> None:
    """A child deleted by hand: the numbers after it (and their seeds) do not shift."""
    first = ask(spec(), [], 3)
    again = ask(spec(), [running(first[0]), running(first[2])], 1)
    assert again[0].number == 3
    assert again[0] == ask(spec(), [running(s) for s in first], 1)[0]


def test_parameters_outside_the_space_are_not_trusted() -> None:
    """An edited annotation (value outside the range) is treated as a failed trial, not fed to
    the sampler (Optuna would reject it)."""
    bad = TrialRecord(0, {"learning_rate": 5.0}, "complete", 0.9, ((1, 0.9),))
    (s,) = ask(spec(), [bad], 1)
    assert s.number == 1
    assert 1e-4 <= float(s.params["learning_rate"]) <= 1e-1


def test_distributions_and_grids() -> None:
    sp = spec(
        parameters=[
            LR,
            UNITS | {"max": 250},  # not on the step: the top becomes 224
            OPT,
            {"name": "dropout", "type": "double", "min": 0.1, "max": 0.5, "step": 0.1},
        ]
    )
    d = distributions(sp)
    assert d["learning_rate"].log  # type: ignore[attr-defined]
    assert (d["units"].low, d["units"].high, d["units"].step) == (32, 224, 32)  # type: ignore[attr-defined]
    assert d["optimizer"].choices == ("adam", "sgd", "rmsprop")  # type: ignore[attr-defined]
    assert grid_values(sp.parameters[3]) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert trial_seed(42, 7) == trial_seed(42, 7) != trial_seed(42, 8)


# --- pruning -------------------------------------------------------------------------------------


def curves_study(algorithm: str, running_curves: dict[int, list[float]], **es: object) -> list[int]:
    """Five finished trials with rising curves, then running ones; returns what gets pruned."""
    sp = spec(earlyStopping={"algorithm": algorithm, **es}, maxRuns=20)
    params = [s.params for s in ask(sp, [], 5 + len(running_curves))]
    trials = []
    for n in range(5):
        curve = [0.5 + 0.05 * n + 0.04 * e for e in range(9)]
        trials.append(
            TrialRecord(n, params[n], "complete", curve[-1], tuple(enumerate(curve, start=1)))
        )
    for n, curve in running_curves.items():
        trials.append(TrialRecord(n, params[n], "running", None, tuple(enumerate(curve, start=1))))
    return build_study(sp, trials, "team-a/exp").prune


def test_median_prunes_a_run_below_the_median_only() -> None:
    good = [0.6, 0.66, 0.72]  # above the finished runs' median at epoch 3 (0.68)
    bad = [0.3, 0.31, 0.32]
    assert curves_study("median", {5: good, 6: bad}, startupRuns=5, warmupEpochs=1) == [6]


def test_median_waits_for_startup_runs_and_warmup() -> None:
    bad = [0.3, 0.31, 0.32]
    assert curves_study("median", {5: bad}, startupRuns=6) == []
    assert curves_study("median", {5: bad}, startupRuns=1, warmupEpochs=4) == []


@pytest.mark.parametrize("algorithm", ["successiveHalving", "hyperband"])
def test_successive_halving_prunes_the_worst_at_a_rung(algorithm: str) -> None:
    bad = [0.1, 0.1, 0.1]
    good = [0.95, 0.96, 0.97]
    pruned = curves_study(algorithm, {5: bad, 6: good}, minEpochs=1, reductionFactor=3)
    assert 5 in pruned
    assert 6 not in pruned


def test_pruning_decisions_are_deterministic() -> None:
    curves = {5: [0.4, 0.45, 0.5], 6: [0.8, 0.85, 0.9], 7: [0.2, 0.2, 0.2]}
    for algorithm in ("median", "successiveHalving", "hyperband"):
        first = curves_study(algorithm, curves, startupRuns=2)
        assert all(curves_study(algorithm, curves, startupRuns=2) == first for _ in range(3))


def test_no_pruner_never_prunes() -> None:
    assert curves_study("none", {5: [0.0, 0.0, 0.0]}) == []


@pytest.mark.parametrize("algorithm", ["successiveHalving", "hyperband"])
def test_rung_memo_saves_replays_and_never_changes_a_decision(algorithm: str) -> None:
    """The memo of finished trials' rung values gives the decisions of a full replay, also
    after trials finished or changed since it was filled."""
    sp = spec(earlyStopping={"algorithm": algorithm, "minEpochs": 1}, maxRuns=40)
    params = [s.params for s in ask(sp, [], 30)]

    def records(finished: int, twist: float = 0.0) -> list[TrialRecord]:
        out = []
        for n in range(30):
            curve = tuple((e, 0.3 + ((n * 37) % 11) / 20 + 0.01 * e) for e in range(1, 10))
            if n < finished:
                value = curve[-1][1] + (twist if n == 3 else 0.0)
                out.append(TrialRecord(n, params[n], "complete", value, curve))
            else:
                out.append(TrialRecord(n, params[n], "running", None, curve[:3]))
        return out

    memo: dict[int, tuple[int, dict[str, object]]] = {}
    passes = (  # (finished, twist of trial 3, the finished trials the rebuild replays)
        (20, 0.0, range(20)),
        (20, 0.0, range(0)),  # nothing changed
        (25, 0.0, range(20, 25)),
        (25, 0.3, range(3, 25)),  # trial 3 changed: it and every later one
    )
    for finished, twist, replayed in passes:
        trials = records(finished, twist)
        with_memo = build_study(sp, trials, "team-a/exp", memo)
        assert set(with_memo.rungs) == set(replayed)
        memo.update(with_memo.rungs)  # what the controller keeps between passes
        assert with_memo.prune == build_study(sp, trials, "team-a/exp").prune
    assert set(memo) == set(range(25))
    assert any(attrs for _, attrs in memo.values())
