"""What one pass of the Experiment controller decides, as a table: the experiment and its trials
as observed -> the trials it creates and stops, the phase, the conditions and the Events.

Every row goes through `decide` (the controller's pure entry: validation, the experiment's own
children, `decide_experiment`). The experiment is the factory's `BASE` (random search,
maximize `val_accuracy`, maxRuns 8, parallelism 2, maxFailedRuns 3) with the row's spec on top;
trial `n` of a row is the child run `mnist-lr-<n:03d>` with the parameters the search gave it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from experiment_factory import BASE, finish, report
from merge_patch import merge

from accordion_operator.api.experiment import Experiment
from accordion_operator.experiment import search
from accordion_operator.experiment.decide import Observed, decide
from accordion_operator.experiment.trials import ANNOTATION_STOPPED, build_trial_run, run_name

NOW = 1_700_000_000.0
STARTED = "2023-11-14T22:00:00Z"

# --- the vocabulary of the table -----------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """A trial's child run as observed: its state and the objective the trainer reported."""

    state: Literal["Running", "Succeeded", "Failed", "Pruned"]
    #: the final objective (Succeeded)
    value: float | None = None
    #: the objective per epoch so far
    curve: tuple[float, ...] = ()


def running(*curve: float) -> Trial:
    return Trial("Running", curve=curve)


def succeeded(value: float, *curve: float) -> Trial:
    return Trial("Succeeded", value, curve)


def failed() -> Trial:
    return Trial("Failed")


def pruned(*curve: float) -> Trial:
    """Stopped by an earlier pass's pruning (suspended, marked Pruned)."""
    return Trial("Pruned", curve=curve)


Conds = frozenset[tuple[str, str, str]]

#: (type, status, reason) of a search that goes on, with no goal set
SEARCHING: Conds = frozenset(
    {
        ("Running", "True", "Searching"),
        ("Succeeded", "False", "InProgress"),
        ("Failed", "False", "InProgress"),
        ("GoalReached", "False", "NoGoal"),
    }
)


def ended(
    succeeded: str | None = None, failed: str | None = None, goal: str = "False NoGoal"
) -> Conds:
    """The conditions of a search that ended: Succeeded or Failed for its reason."""
    return frozenset(
        {
            ("Running", "False", "SearchEnded"),
            ("Succeeded", "True", succeeded) if succeeded else ("Succeeded", "False", "InProgress"),
            ("Failed", "True", failed) if failed else ("Failed", "False", "InProgress"),
            ("GoalReached", *goal.split()),
        }
    )


def finished_status(reason: str) -> dict[str, Any]:
    """The status a pass that ended the search with Succeeded(`reason`) wrote."""
    t = "2023-11-14T22:10:00Z"

    def cond(ctype: str, status: str, why: str) -> dict[str, Any]:
        return {"type": ctype, "status": status, "reason": why, "lastTransitionTime": t}

    return {
        "phase": "Succeeded",
        "startTime": STARTED,
        "completionTime": t,
        "conditions": [
            cond("Running", "False", "SearchEnded"),
            cond("Succeeded", "True", reason),
            cond("Failed", "False", "InProgress"),
        ],
    }


@dataclass(frozen=True)
class Case:
    """Given the experiment's spec (over BASE), its status and its trials; then the pass creates
    and stops these trials, and leaves this phase, these conditions, these Events."""

    name: str
    spec: dict[str, Any] = field(default_factory=dict)
    trials: tuple[Trial, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    # then
    creates: tuple[int, ...] = ()
    #: (trial, "Pruned" | "Stopped")
    stops: tuple[tuple[int, str], ...] = ()
    phase: str = "Running"
    conditions: Conds = SEARCHING
    events: tuple[str, ...] = ()


MEDIAN = {"earlyStopping": {"algorithm": "median", "startupRuns": 2, "warmupEpochs": 1}}
#: per-epoch objective: two runs that finished well, a run below their median, one above it
FINISHED_WELL = (succeeded(0.9, 0.7, 0.8, 0.9), succeeded(0.9, 0.7, 0.8, 0.9))
LOW, HIGH = (0.2, 0.25, 0.3), (0.75, 0.85, 0.92)
HUGE_GRID = [{"name": f"p{i}", "type": "int", "min": 0, "max": 99, "step": 1} for i in range(3)]

CASES = [
    Case(
        "the first pass creates `parallelism` trials",
        spec={"parallelism": 3},
        creates=(0, 1, 2),
        events=("RunCreated",) * 3,
    ),
    Case(
        "trials running at parallelism: nothing more is created",
        trials=(running(0.5), running()),
    ),
    Case(
        "a finished trial frees a slot for the next trial",
        trials=(succeeded(0.9), running()),
        creates=(2,),
        events=("RunCreated",),
    ),
    Case(
        "a failed trial frees its slot too, up to maxFailedRuns",
        spec={"maxFailedRuns": 1},
        trials=(failed(), running()),
        creates=(2,),
        events=("RunCreated",),
    ),
    Case(
        "a parallelism above the trials left creates only those",
        spec={"maxRuns": 3, "parallelism": 3},
        trials=(succeeded(0.9), succeeded(0.8)),
        creates=(2,),
        events=("RunCreated",),
    ),
    Case(
        "max trials reached and finished: Succeeded, the best run reported",
        spec={"maxRuns": 3},
        trials=(succeeded(0.8), succeeded(0.9), failed()),
        phase="Succeeded",
        conditions=ended(succeeded="MaxRunsCompleted"),
        events=("MaxRunsCompleted",),
    ),
    Case(
        "max trials reached with the goal unmet: Succeeded, GoalReached False",
        spec={"maxRuns": 2, "objective": {"metric": "val_accuracy", "goal": 0.95}},
        trials=(succeeded(0.8), succeeded(0.9)),
        phase="Succeeded",
        conditions=ended(succeeded="MaxRunsCompleted", goal="False GoalNotReached"),
        events=("MaxRunsCompleted",),
    ),
    Case(
        "max trials reached, none reported the objective: Failed",
        spec={"maxRuns": 2, "maxFailedRuns": 5},
        trials=(failed(), failed()),
        phase="Failed",
        conditions=ended(failed="NoSuccessfulRuns"),
        events=("NoSuccessfulRuns",),
    ),
    Case(
        "a grid smaller than maxRuns ends when it is exhausted",
        spec={
            "algorithm": "grid",
            "parameters": [{"name": "learning_rate", "type": "categorical", "values": ["a", "b"]}],
        },
        trials=(succeeded(0.8), succeeded(0.9)),
        phase="Succeeded",
        conditions=ended(succeeded="GridExhausted"),
        events=("GridExhausted",),
    ),
    Case(
        "the goal reached ends the search and stops the other runs",
        spec={"parallelism": 3, "objective": {"metric": "val_accuracy", "goal": 0.9}},
        trials=(running(0.5, 0.6), succeeded(0.95), running()),
        stops=((0, "Stopped"), (2, "Stopped")),
        phase="Succeeded",
        conditions=ended(succeeded="GoalReached", goal="True GoalReached"),
        events=("GoalReached",),
    ),
    Case(
        "minimize: the goal is reached from below",
        spec={"objective": {"metric": "val_accuracy", "direction": "minimize", "goal": 0.1}},
        trials=(succeeded(0.05), running()),
        stops=((1, "Stopped"),),
        phase="Succeeded",
        conditions=ended(succeeded="GoalReached", goal="True GoalReached"),
        events=("GoalReached",),
    ),
    Case(
        "more failures than maxFailedRuns fail the search and stop the other runs",
        spec={"parallelism": 3, "maxFailedRuns": 1},
        trials=(failed(), failed(), running()),
        stops=((2, "Stopped"),),
        phase="Failed",
        conditions=ended(failed="TooManyFailedRuns"),
        events=("TooManyFailedRuns",),
    ),
    Case(
        "median pruning stops a run below the median and creates nothing in the same pass",
        spec=MEDIAN,
        trials=(*FINISHED_WELL, running(*LOW), running(*HIGH)),
        stops=((2, "Pruned"),),
        events=("RunPruned",),
    ),
    Case(
        "once the pruned run reads as pruned, its slot is used",
        spec=MEDIAN,
        trials=(*FINISHED_WELL, pruned(*LOW), running(*HIGH)),
        creates=(4,),
        events=("RunCreated",),
    ),
    Case(
        "median pruning waits for startupRuns finished runs",
        spec=MEDIAN,
        trials=(FINISHED_WELL[0], running(*LOW), running(0.1, 0.1, 0.1)),
    ),
    Case(
        "a grid with too many points fails at once: nothing is created",
        spec={"algorithm": "grid", "parameters": HUGE_GRID},
        phase="Failed",
        conditions=ended(failed="InvalidSpec"),
        events=("InvalidSpec",),
    ),
    Case(
        "a spec the models reject fails with InvalidSpec",
        spec={"parameters": []},
        phase="Failed",
        conditions=frozenset({("Failed", "True", "InvalidSpec")}),
        events=("InvalidSpec",),
    ),
    Case(
        "a rejected spec already Failed is left alone",
        spec={"parameters": []},
        status={"phase": "Failed"},
        phase="Failed",
        conditions=frozenset(),
    ),
    Case(
        "a finished experiment is left alone: nothing created, its conditions kept",
        spec={"maxRuns": 4},
        status=finished_status("MaxRunsCompleted"),
        trials=(succeeded(0.8), succeeded(0.9)),
        phase="Succeeded",
        conditions=ended(succeeded="MaxRunsCompleted"),
    ),
    Case(
        "a finished experiment stops a run still active (the operator died before it did)",
        status=finished_status("MaxRunsCompleted"),
        trials=(succeeded(0.8), running(0.5)),
        stops=((1, "Stopped"),),
        phase="Succeeded",
        conditions=ended(succeeded="MaxRunsCompleted"),
    ),
]


# --- playing a row -------------------------------------------------------------------------------


def child_run(exp: Experiment, s: search.Suggestion, trial: Trial) -> dict[str, Any]:
    """The child run of a suggested trial, in the row's state (as the run controller and the
    trainer would have left it)."""
    body = build_trial_run(exp, s)
    if trial.state == "Succeeded":
        finish(body, trial.value, curve=list(trial.curve) or None)
    elif trial.state == "Failed":
        finish(body, None, phase="Failed")
    elif trial.curve:
        report(body, list(trial.curve))
    else:
        body["status"] = {"phase": "Running"}
    if trial.state == "Pruned":
        body["metadata"]["annotations"][ANNOTATION_STOPPED] = "Pruned"
        body["spec"]["suspend"] = True
        body["status"]["phase"] = "Suspended"
    return body


def children(exp: Experiment, trials: tuple[Trial, ...]) -> tuple[dict[str, Any], ...]:
    asked = search.suggest(search.build_study(exp.spec, [], exp.key), len(trials))
    return tuple(child_run(exp, s, t) for s, t in zip(asked, trials, strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_one_pass(case: Case) -> None:
    body = merge(BASE, {"spec": case.spec, "status": case.status})
    runs = children(Experiment.model_validate(body), case.trials) if case.trials else ()
    plan = decide(Observed(body, runs), NOW).plan

    created = [o["metadata"]["name"] for o in plan.create]
    assert created == [run_name("mnist-lr", n) for n in case.creates]
    assert plan.stop == [(run_name("mnist-lr", n), why) for n, why in case.stops]
    status = merge(case.status, plan.status_patch or {})
    assert status.get("phase") == case.phase
    conditions = {(c["type"], c["status"], c["reason"]) for c in status.get("conditions", [])}
    assert conditions == case.conditions
    assert tuple(reason for _, reason, _ in plan.events) == case.events
