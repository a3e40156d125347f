"""Experiment (`accordion.dev/v1alpha1`): a hyperparameter search that spawns TrainingRuns.

Single source of truth like `api.trainingrun`: `accordion_operator.crd` renders the CRD from
these models plus the CEL rules declared here. The search itself (Optuna ask/tell, pruners)
lives in `accordion_operator.experiment.search`; the reconcile in `experiment.decide`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from accordion_operator.api.common import ApiModel, Condition, ObjectMeta, ShortText, Text, cel
from accordion_operator.api.trainingrun import (
    HPARAM_NAME_PATTERN,
    LEARNING_RATE_HPARAMS,
    HParamValue,
    Timestamp,
    TrainingRunSpec,
)

KIND = "Experiment"
PLURAL = "experiments"
SINGULAR = "experiment"
SHORT_NAMES = ("exp",)

#: Children are named `<experiment>-<trial:03d>` and run names are at most 50 characters
#: (crd.trainingrun.MAX_RUN_NAME), so experiment names stay within 50 - 4.
MAX_EXPERIMENT_NAME = 46
#: maxRuns bound: trial numbers stay three digits, child names stay deterministic and short.
MAX_RUNS = 1000
#: Per-run rows kept in status.runs (the most recent trials); counts and the best run cover all.
MAX_STATUS_RUNS = 100
#: A grid search may enumerate at most this many points (product of the parameters' grids);
#: checked by the operator, since CEL cannot multiply over a list.
MAX_GRID_POINTS = 100000
#: Grid points per parameter, checked by CEL ((max - min) / step).
MAX_POINTS_PER_PARAMETER = 10000

# --- condition types and reasons ----------------------------------------------------------------

COND_RUNNING = "Running"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
COND_GOAL_REACHED = "GoalReached"
CONDITION_TYPES = (COND_RUNNING, COND_SUCCEEDED, COND_FAILED, COND_GOAL_REACHED)

#: Running=True: trials are being created or are still running.
REASON_SEARCHING = "Searching"
#: Running=False: the search is over (see Succeeded/Failed).
REASON_SEARCH_ENDED = "SearchEnded"
#: Succeeded=True: maxRuns trials finished (or the grid was exhausted).
REASON_MAX_RUNS = "MaxRunsCompleted"
REASON_GRID_EXHAUSTED = "GridExhausted"
#: Succeeded=True and GoalReached=True: a run met objective.goal; the other runs were stopped.
REASON_GOAL_REACHED = "GoalReached"
#: GoalReached=False: no run met the goal (yet), or no goal is set.
REASON_GOAL_NOT_REACHED = "GoalNotReached"
REASON_NO_GOAL = "NoGoal"
#: Failed=True: more than maxFailedRuns children failed; the active ones were stopped.
REASON_TOO_MANY_FAILURES = "TooManyFailedRuns"
#: Failed=True: every trial ended without reporting the objective metric.
REASON_NO_SUCCESSFUL_RUNS = "NoSuccessfulRuns"
#: Failed=True: a spec error the schema cannot express (e.g. a grid with too many points).
REASON_INVALID_SPEC = "InvalidSpec"
#: Succeeded/Failed=False while the search goes on.
REASON_IN_PROGRESS = "InProgress"

Phase = Literal["Running", "Succeeded", "Failed"]
FINISHED_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})

#: Outcome of one child run, as shown in status.runs.
Outcome = Literal["Running", "Succeeded", "Failed", "Pruned", "Stopped"]

# --- spec ----------------------------------------------------------------------------------------

ParamName = Annotated[str, Field(min_length=1, max_length=63, pattern=HPARAM_NAME_PATTERN)]


class Parameter(ApiModel):
    """One search dimension; its value reaches the training code as `hyperparameters[name]`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type != 'categorical' || (has(self.values) && size(self.values) > 0)",
                    "a categorical parameter needs a non-empty values list",
                ),
                cel(
                    "self.type != 'categorical' || (!has(self.min) && !has(self.max) && "
                    "!has(self.step) && !self.log)",
                    "min, max, step and log apply only to double and int parameters",
                ),
                cel(
                    "self.type == 'categorical' || (has(self.min) && has(self.max))",
                    "double and int parameters need min and max",
                ),
                cel(
                    "self.type == 'categorical' || !has(self.values)",
                    "values applies only to categorical parameters",
                ),
                cel(
                    "!has(self.min) || !has(self.max) || self.min < self.max",
                    "empty or inverted range: min must be < max",
                ),
                cel(
                    "!self.log || (has(self.min) && self.min > 0.0)",
                    "log scale needs min > 0",
                ),
                cel(
                    "!self.log || !has(self.step)",
                    "log scale and step cannot be combined (Optuna samples a log range "
                    "continuously)",
                ),
                cel("!has(self.step) || self.step > 0.0", "step must be > 0"),
                # every trial of a range reaching 0 would be refused before it starts (checks.py)
                cel(
                    f"!(self.name in {list(LEARNING_RATE_HPARAMS)}) || self.type == 'categorical' "
                    "|| !has(self.min) || self.min > 0.0",
                    f"{' and '.join(LEARNING_RATE_HPARAMS)} must be > 0: set min > 0",
                ),
                cel(
                    "self.type != 'int' || ("
                    "(!has(self.min) || double(int(self.min)) == self.min) && "
                    "(!has(self.max) || double(int(self.max)) == self.max) && "
                    "(!has(self.step) || double(int(self.step)) == self.step))",
                    "int parameters need whole-number min, max and step",
                ),
                cel(
                    "!has(self.step) || !has(self.min) || !has(self.max) || "
                    f"(self.max - self.min) / self.step <= {float(MAX_POINTS_PER_PARAMETER)}",
                    f"at most {MAX_POINTS_PER_PARAMETER} grid points per parameter: "
                    "(max - min) / step is too large",
                ),
            ]
        }
    )

    name: ParamName
    type: Literal["double", "int", "categorical"]
    min: float | None = Field(default=None, description="lower bound (inclusive)")
    max: float | None = Field(default=None, description="upper bound (inclusive)")
    step: float | None = Field(
        default=None,
        description="grid spacing: values min, min+step, ... <= max (required by algorithm grid)",
    )
    log: bool = Field(default=False, description="sample on a log scale (min > 0)")
    values: Annotated[list[Annotated[Text, Field(max_length=256)]], Field(max_length=64)] | None = (
        Field(default=None, description="choices of a categorical parameter")
    )


class Objective(ApiModel):
    metric: Annotated[Text, Field(min_length=1, max_length=63)] = Field(
        description="a metric the trainer reports per epoch, e.g. val_accuracy"
    )
    direction: Literal["maximize", "minimize"] = "maximize"
    goal: float | None = Field(
        default=None, description="end the search as soon as a finished run reaches this value"
    )


class EarlyStopping(ApiModel):
    """Stop unpromising runs from their per-epoch objective metric (Optuna pruners)."""

    algorithm: Literal["none", "median", "successiveHalving", "hyperband"] = "none"
    startup_runs: Annotated[int, Field(ge=0, le=MAX_RUNS)] = Field(
        default=5, description="median: finished runs needed before any run is stopped"
    )
    warmup_epochs: Annotated[int, Field(ge=0, le=100000)] = Field(
        default=1, description="median: epochs a run always gets before it can be stopped"
    )
    min_epochs: Annotated[int, Field(ge=1, le=100000)] = Field(
        default=1, description="successiveHalving/hyperband: epochs of the first rung"
    )
    reduction_factor: Annotated[int, Field(ge=2, le=100)] = Field(
        default=3, description="successiveHalving/hyperband: 1/reductionFactor go on per rung"
    )


class ExperimentSpec(ApiModel):
    """A hyperparameter search over TrainingRuns made from `template`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.parallelism <= self.maxRuns", "parallelism must be <= maxRuns"),
                cel(
                    "self.algorithm != 'grid' || "
                    "self.parameters.all(p, p.type == 'categorical' || has(p.step))",
                    "algorithm grid needs a step on every double and int parameter",
                ),
                cel(
                    "self.parameters == oldSelf.parameters && self.algorithm == oldSelf.algorithm "
                    "&& self.seed == oldSelf.seed && self.objective == oldSelf.objective",
                    "spec.parameters, algorithm, seed and objective are immutable (the search "
                    "is rebuilt from them); create a new Experiment instead",
                    reason="FieldValueForbidden",
                ),
            ]
        }
    )

    template: TrainingRunSpec = Field(
        description="the TrainingRun spec every trial runs; parameters are merged into its "
        "hyperparameters"
    )
    parameters: Annotated[
        list[Parameter],
        Field(
            min_length=1,
            max_length=32,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ]
    algorithm: Literal["random", "grid", "tpe"] = "random"
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    tpe_startup_runs: Annotated[int, Field(ge=1, le=MAX_RUNS)] = Field(
        default=10, description="tpe: random trials before the model-based suggestions start"
    )
    objective: Objective
    max_runs: Annotated[int, Field(ge=1, le=MAX_RUNS)] = 10
    parallelism: Annotated[int, Field(ge=1, le=MAX_RUNS)] = 1
    max_failed_runs: Annotated[int, Field(ge=0, le=MAX_RUNS)] = Field(
        default=3, description="the experiment fails when more runs than this fail"
    )
    early_stopping: EarlyStopping = EarlyStopping()


# --- status --------------------------------------------------------------------------------------

ParamValues = Annotated[
    dict[ParamName, HParamValue],
    Field(max_length=32, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}),
]
RunName = Annotated[str, Field(max_length=63)]
UriText = Annotated[str, Field(max_length=2048)]


class RunRecord(ApiModel):
    """One row of the per-run table."""

    name: RunName
    trial: Annotated[int, Field(ge=0)]
    parameters: ParamValues = {}
    metric: float | None = None
    outcome: Outcome


class BestRun(ApiModel):
    name: RunName
    trial: Annotated[int, Field(ge=0)]
    parameters: ParamValues = {}
    metric: float
    results_uri: UriText | None = Field(
        default=None, alias="resultsURI", description="s3://bucket/prefix/run/ of its model"
    )


class ExperimentStatus(ApiModel):
    phase: Phase | None = None
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=8,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        ),
    ] = []
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    runs_created: Annotated[int, Field(ge=0)] | None = None
    runs_active: Annotated[int, Field(ge=0)] | None = None
    runs_succeeded: Annotated[int, Field(ge=0)] | None = None
    runs_failed: Annotated[int, Field(ge=0)] | None = None
    runs_pruned: Annotated[int, Field(ge=0)] | None = None
    runs_stopped: Annotated[int, Field(ge=0)] | None = None
    runs_summary: Annotated[str, Field(max_length=32)] | None = Field(
        default=None, description="finished/maxRuns, for `kubectl get`"
    )
    best_run: BestRun | None = None
    runs: Annotated[list[RunRecord], Field(max_length=MAX_STATUS_RUNS)] = Field(
        default=[], description=f"the {MAX_STATUS_RUNS} most recent trials"
    )
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    message: ShortText | None = None


class Experiment(ApiModel):
    metadata: ObjectMeta
    spec: ExperimentSpec
    status: ExperimentStatus = Field(default_factory=ExperimentStatus)  # see TrainingRun.status

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"
