"""The search: Optuna ask/tell over an in-memory study rebuilt from the observed trials.

Pure (no kube I/O). Optuna's study is never persisted: every decision rebuilds it from the
Experiment's child runs -- their parameters (an annotation), their per-epoch objective values and
their outcome -- so an operator restart loses nothing, and the child names `<exp>-<trial:03d>`
(the apiserver refuses a second object of a name) prevent duplicates.

Determinism: trial `n` is suggested by a sampler seeded from `(seed, n)` over a study holding
trials `0..n-1` in trial order, so the same observations and seed give the same suggestion for
trial `n`, whether it is asked right after `n-1` or after a restart. (Random search is fully
history-independent; TPE depends on which earlier trials had finished, which is what it is for;
grid search enumerates the grid in a seed-shuffled order and never repeats a point.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial

from accordion_operator.api.experiment import MAX_GRID_POINTS, ExperimentSpec, Parameter

# Optuna logs every tell at INFO; the operator's rebuilds would flood the log.
optuna.logging.set_verbosity(optuna.logging.WARNING)

ParamValue = str | int | float
TrialStateName = Literal["running", "complete", "pruned", "failed"]


@dataclass(frozen=True)
class TrialRecord:
    """One trial as observed from its child run."""

    number: int
    params: Mapping[str, ParamValue]
    state: TrialStateName
    #: final objective value (state complete)
    value: float | None = None
    #: (epoch, objective value) as the trainer reported them, ascending epochs
    intermediate: tuple[tuple[int, float], ...] = ()
    #: GridSampler's grid index (algorithm grid), kept in the child's annotations
    grid_id: int | None = None


#: Which sampler suggested a trial (the child's annotation `accordion.dev/sampler`):
#: `tpe-startup` is one of TPE's first `tpeStartupRuns` trials, drawn at random because fewer
#: runs than that had finished (Optuna's rule: complete + pruned trials).
SamplerName = Literal["random", "grid", "tpe", "tpe-startup"]


@dataclass(frozen=True)
class Suggestion:
    number: int
    params: dict[str, ParamValue]
    grid_id: int | None = None
    sampler: SamplerName = "random"


# --- search space --------------------------------------------------------------------------------


def _stepped_high(low: float, high: float, step: float) -> float:
    """The largest grid point <= high (Optuna would warn and do the same)."""
    return low + math.floor((high - low) / step + 1e-9) * step


def grid_values(p: Parameter) -> list[ParamValue]:
    """The points of one parameter's grid (categorical values, or min, min+step, ... <= max)."""
    if p.type == "categorical":
        return list(p.values or [])
    assert p.min is not None
    assert p.max is not None
    assert p.step is not None
    n = math.floor((p.max - p.min) / p.step + 1e-9) + 1
    if p.type == "int":
        lo, st = int(p.min), int(p.step)
        return [lo + k * st for k in range(n)]
    # round away the float noise of min + k*step (0.30000000000000004)
    return [round(p.min + k * p.step, 12) for k in range(n)]


def grid_space(spec: ExperimentSpec) -> dict[str, list[ParamValue]]:
    return {p.name: grid_values(p) for p in sorted(spec.parameters, key=lambda p: p.name)}


def grid_size(spec: ExperimentSpec) -> int:
    """Points of the whole grid (capped: anything above MAX_GRID_POINTS is too many)."""
    size = 1
    for p in spec.parameters:
        if p.type == "categorical":
            points = len(p.values or [])
        elif p.step is None or p.min is None or p.max is None:
            return MAX_GRID_POINTS + 1  # a continuous range has no grid
        else:
            points = math.floor((p.max - p.min) / p.step + 1e-9) + 1
        size *= max(1, points)
        if size > MAX_GRID_POINTS:
            return size
    return size


def distributions(spec: ExperimentSpec) -> dict[str, BaseDistribution]:
    """Optuna distributions of the parameters (grid search: each parameter's grid points)."""
    out: dict[str, BaseDistribution] = {}
    grid = spec.algorithm == "grid"
    for p in spec.parameters:
        if grid or p.type == "categorical":
            out[p.name] = CategoricalDistribution(grid_values(p))
        elif p.type == "int":
            assert p.min is not None
            assert p.max is not None
            step = int(p.step or 1)
            lo = int(p.min)
            hi = int(_stepped_high(lo, int(p.max), step))
            out[p.name] = IntDistribution(lo, hi, log=p.log, step=step)
        else:
            assert p.min is not None
            assert p.max is not None
            top = p.max if p.step is None else round(_stepped_high(p.min, p.max, p.step), 12)
            out[p.name] = FloatDistribution(p.min, top, log=p.log, step=p.step)
    return out


def max_trials(spec: ExperimentSpec) -> int:
    """maxRuns, or fewer when the grid has fewer points."""
    if spec.algorithm == "grid":
        return min(spec.max_runs, grid_size(spec))
    return spec.max_runs


# --- samplers and pruners ------------------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    """A seed per (experiment seed, trial number), stable across processes and Python versions."""
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def sampler_for(spec: ExperimentSpec, number: int) -> optuna.samplers.BaseSampler:
    if spec.algorithm == "grid":
        # The grid's shuffled order must be the same for every trial: seeded by the experiment.
        return optuna.samplers.GridSampler(grid_space(spec), seed=spec.seed)
    if spec.algorithm == "tpe":
        return optuna.samplers.TPESampler(
            seed=trial_seed(spec.seed, number), n_startup_trials=spec.tpe_startup_runs
        )
    return optuna.samplers.RandomSampler(seed=trial_seed(spec.seed, number))


def pruner_for(spec: ExperimentSpec) -> optuna.pruners.BasePruner:
    es = spec.early_stopping
    if es.algorithm == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=es.startup_runs, n_warmup_steps=es.warmup_epochs
        )
    if es.algorithm == "successiveHalving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=es.min_epochs, reduction_factor=es.reduction_factor
        )
    if es.algorithm == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=es.min_epochs,
            max_resource=max(spec.template.epochs, es.min_epochs),
            reduction_factor=es.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def _stateful(spec: ExperimentSpec) -> bool:
    """Successive halving records each trial's rung values in the study as it goes."""
    return spec.early_stopping.algorithm in ("successiveHalving", "hyperband")


# --- the study -----------------------------------------------------------------------------------


#: a finished trial's (fingerprint of the finished trials up to it, its successive-halving rung
#: values)
RungEntry = tuple[int, dict[str, object]]
#: trial number -> RungEntry: lets a rebuild skip replaying the pruner over unchanged finished
#: trials.
RungMemo = dict[int, RungEntry]
_RUNG_PREFIX = "completed_rung_"


@dataclass
class Study:
    """An Optuna study rebuilt from observations, plus what the rebuild decided."""

    spec: ExperimentSpec
    study: optuna.Study
    dists: dict[str, BaseDistribution]
    #: running trials the pruner says to stop
    prune: list[int] = field(default_factory=list)
    #: the rung values this rebuild replayed, for the caller to merge into its memo
    rungs: RungMemo = field(default_factory=dict)


def _grid_attrs(spec: ExperimentSpec, grid_id: int | None) -> dict[str, object]:
    if spec.algorithm != "grid" or grid_id is None:
        return {}
    return {"grid_id": grid_id, "search_space": grid_space(spec)}


def build_study(
    spec: ExperimentSpec,
    trials: Sequence[TrialRecord],
    study_name: str,
    memo: Mapping[int, RungEntry] | None = None,
) -> Study:
    """Rebuild the study: every trial is added RUNNING in trial order with its intermediate
    values, finished trials are told their outcome, then the pruner judges the running ones.

    Successive halving keeps per-trial rung values in the study; the rebuild recreates them by
    consulting the pruner once for every finished trial (in trial order, at its last epoch)
    before telling it, which is what a live pruner would have recorded had it been asked at that
    epoch. A finished trial's rung values depend only on the finished trials before it, so
    `memo` (kept by the caller between rebuilds) holds them per fingerprint of that prefix: the
    replay (O(n^2) in Optuna's Hyperband) then only runs over trials that finished since. The
    rebuild only reads `memo` (it may run off the caller's thread); what it replayed comes back
    in `Study.rungs`.
    """
    dists = distributions(spec)
    study = optuna.create_study(
        study_name=study_name,  # Hyperband assigns brackets by hashing it with the trial number
        direction="maximize" if spec.objective.direction == "maximize" else "minimize",
        # `suggest` sets the real sampler per trial; meanwhile one whose after_trial does
        # nothing (GridSampler's scans the whole study on every tell: O(n^2) in a rebuild)
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=pruner_for(spec),
    )
    by_number = {t.number: t for t in trials if _fits(t.params, dists)}
    top = max((t.number for t in trials), default=-1)
    stateful = _stateful(spec)
    finished = [n for n in range(top + 1) if n in by_number and by_number[n].state != "running"]
    chain, known = _memo_prefix(by_number, finished, memo if stateful else None)
    for n in range(top + 1):
        rec = by_number.get(n)
        if rec is None:
            # A missing child (deleted by hand) or one whose parameters do not fit the space: keep
            # the trial number taken so later numbers (and their seeds) do not shift.
            study.add_trial(create_trial(state=TrialState.FAIL))
            continue
        study.add_trial(
            create_trial(
                state=TrialState.RUNNING,
                params=dict(rec.params),
                distributions={k: dists[k] for k in rec.params},
                intermediate_values=dict(rec.intermediate),
                system_attrs={**_grid_attrs(spec, rec.grid_id), **known.get(n, {})},
            )
        )
    built = Study(spec, study, dists)
    for n in finished:
        t = by_number[n]
        if stateful and t.intermediate and n not in known:
            optuna.trial.Trial(study, _trial_id(study, n)).should_prune()
            attrs = study.get_trials(deepcopy=False)[n].system_attrs
            built.rungs[n] = (
                chain[n],
                {k: v for k, v in attrs.items() if k.startswith(_RUNG_PREFIX)},
            )
        if t.state == "complete" and t.value is not None and math.isfinite(t.value):
            study.tell(n, t.value)
        elif t.state == "pruned" and t.intermediate:
            study.tell(n, state=TrialState.PRUNED)
        else:
            study.tell(n, state=TrialState.FAIL)
    if spec.early_stopping.algorithm != "none":
        for n in range(top + 1):
            live = by_number.get(n)
            if live is None or live.state != "running" or not live.intermediate:
                continue
            if optuna.trial.Trial(study, _trial_id(study, n)).should_prune():
                built.prune.append(n)
    return built


def _memo_prefix(
    by_number: Mapping[int, TrialRecord],
    finished: Sequence[int],
    memo: Mapping[int, RungEntry] | None,
) -> tuple[dict[int, int], dict[int, dict[str, object]]]:
    """(fingerprint of each finished trial's prefix, the rung values `memo` holds for the
    longest unchanged prefix of finished trials)."""
    known: dict[int, dict[str, object]] = {}
    chain: dict[int, int] = {}
    h, hits = 0, memo is not None
    for n in finished:
        done = by_number[n]
        h = hash((h, n, done.state, done.value, done.intermediate))
        chain[n] = h
        cached = memo.get(n) if memo is not None else None
        hits = hits and cached is not None and cached[0] == h
        if hits and cached is not None:
            known[n] = cached[1]
    return chain, known


def _trial_id(study: optuna.Study, number: int) -> int:
    trial_id: int = study.get_trials(deepcopy=False)[number]._trial_id
    return trial_id


def _fits(params: Mapping[str, ParamValue], dists: Mapping[str, BaseDistribution]) -> bool:
    """Whether recorded parameters belong to the search space (spec.parameters is immutable,
    but an annotation could have been edited)."""
    if set(params) != set(dists):
        return False
    for name, value in params.items():
        dist = dists[name]
        try:
            if not dist._contains(dist.to_internal_repr(value)):
                return False
        except (ValueError, TypeError):
            return False
    return True


def suggest(built: Study, count: int) -> list[Suggestion]:
    """Ask for `count` new trials, numbered after the existing ones."""
    out: list[Suggestion] = []
    study = built.study
    spec = built.spec
    for _ in range(count):
        number = len(study.get_trials(deepcopy=False))
        study.sampler = sampler_for(spec, number)
        name = sampler_name(spec, study)
        trial = study.ask(built.dists)
        assert trial.number == number
        attrs = study.get_trials(deepcopy=False)[number].system_attrs
        grid_id = attrs.get("grid_id") if spec.algorithm == "grid" else None
        params: dict[str, ParamValue] = {k: _plain(v) for k, v in trial.params.items()}
        out.append(Suggestion(number, params, int(grid_id) if grid_id is not None else None, name))
    return out


def sampler_name(spec: ExperimentSpec, study: optuna.Study) -> SamplerName:
    """Which sampler the next ask uses; for TPE, whether it is still in its random startup
    (`TPESampler` counts complete and pruned trials against `n_startup_trials`)."""
    if spec.algorithm == "grid":
        return "grid"
    if spec.algorithm != "tpe":
        return "random"
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return "tpe" if len(done) >= spec.tpe_startup_runs else "tpe-startup"


def _plain(value: object) -> ParamValue:
    """Numpy scalars and the like -> JSON-friendly Python values."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return value
    try:
        as_float = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return int(as_float) if as_float.is_integer() and "int" in type(value).__name__ else as_float
