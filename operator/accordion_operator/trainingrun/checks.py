"""What the apiserver cannot check of a run before it starts (pure): a built-in model that
exists, usable hyperparameter names and values (the ones the trainer reads itself included),
credentials Secrets with the contract's keys."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from accordion_operator.api.common import TEXT_PATTERN
from accordion_operator.api.trainingrun import (
    HPARAM_NAME_PATTERN,
    LEARNING_RATE_HPARAMS,
    OPTIMIZER_HPARAM,
    OPTIMIZERS,
    REASON_INVALID_HPARAMS,
    REASON_SECRET_INVALID,
    REASON_SECRET_MISSING,
    REASON_UNKNOWN_MODEL,
    TrainingRun,
)
from accordion_operator.config import Config
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.observe import SecretInfo

_HPARAM_NAME = re.compile(HPARAM_NAME_PATTERN)
_TEXT = re.compile(TEXT_PATTERN)


def check_run(
    run: TrainingRun, secrets: Mapping[str, SecretInfo | None], cfg: Config
) -> tuple[str, str] | None:
    """What the apiserver cannot check: (reason, actionable message), or None when fine."""
    spec = run.spec
    if spec.model.builtin is not None and spec.model.builtin not in cfg.builtin_models:
        return (
            REASON_UNKNOWN_MODEL,
            f"spec.model.builtin {spec.model.builtin!r} is not a built-in model; "
            f"choose one of: {', '.join(cfg.builtin_models)}",
        )
    for name, value in spec.hyperparameters.items():
        problem = hyperparameter_problem(name, value)
        if problem is not None:
            return REASON_INVALID_HPARAMS, problem
    stores = [("spec.results", spec.results)]
    if spec.data is not None:
        stores.insert(0, ("spec.data", spec.data))
    for where, store in stores:
        name = store.credentials_secret.name
        info = secrets.get(name)
        if info is None:
            return (
                REASON_SECRET_MISSING,
                f"{where}.credentialsSecret: Secret {run.metadata.namespace}/{name} not found; "
                f"create it with keys {builders.ACCESS_KEY} and {builders.SECRET_KEY}",
            )
        missing = {builders.ACCESS_KEY, builders.SECRET_KEY} - info.keys
        if missing:
            return (
                REASON_SECRET_INVALID,
                f"{where}.credentialsSecret: Secret {run.metadata.namespace}/{name} lacks "
                f"key(s) {', '.join(sorted(missing))}",
            )
    return None


def hyperparameter_problem(name: str, value: object) -> str | None:
    """Why one hyperparameter is unusable (an actionable message), or None.

    The map is free-form in the schema (see `TrainingRunSpec.hyperparameters`), so its values
    get here unchecked; messages quote them with repr, which escapes control characters.
    `fullmatch`: Python's `$` also matches before a trailing newline."""
    if not _HPARAM_NAME.fullmatch(name) or len(name) > 63:
        return (
            f"hyperparameter name {name!r} must match {HPARAM_NAME_PATTERN} (at most 63 characters)"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return f"hyperparameter {name!r} must be a string or a number, not {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"hyperparameter {name!r} must be finite"
    if isinstance(value, str) and not _TEXT.fullmatch(value):
        return (
            f"hyperparameter {name!r} holds a control character ({value!r}); "
            "remove tabs, newlines and other control characters"
        )
    if name in LEARNING_RATE_HPARAMS and not _positive_number(value):
        return (
            f"hyperparameter {name!r} (the trainer's learning rate) must be a number > 0, "
            f"e.g. 0.001; got {value!r}"
        )
    if name == OPTIMIZER_HPARAM and str(value).lower() not in OPTIMIZERS:
        return (
            f"hyperparameter {name!r} must name an optimizer the trainer builds: "
            f"{', '.join(OPTIMIZERS)}; not {value!r}"
        )
    return None


def _positive_number(value: str | int | float) -> bool:
    """Whether the trainer, which reads the value with `float()`, gets a usable step size."""
    try:
        number = float(value)
    except (ValueError, OverflowError):  # not a number; an int beyond any float
        return False
    return math.isfinite(number) and number > 0
