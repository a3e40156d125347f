"""What the apiserver cannot check of a run before it starts (pure): a built-in model that
exists, usable hyperparameter names and values, credentials Secrets with the contract's keys."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from accordion_operator.api.trainingrun import (
    HPARAM_NAME_PATTERN,
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
        if not _HPARAM_NAME.match(name) or len(name) > 63:
            return (
                REASON_INVALID_HPARAMS,
                f"hyperparameter name {name!r} must match {HPARAM_NAME_PATTERN} "
                "(at most 63 characters)",
            )
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return (
                REASON_INVALID_HPARAMS,
                f"hyperparameter {name!r} must be a string or a number, not {type(value).__name__}",
            )
        if isinstance(value, float) and not math.isfinite(value):
            return REASON_INVALID_HPARAMS, f"hyperparameter {name!r} must be finite"
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
