"""The TrainingRun CRD from the pydantic models: schema, immutability rules, printer columns."""

from __future__ import annotations

from typing import Any

from accordion_operator.api.common import cel
from accordion_operator.api.trainingrun import (
    IMMUTABLE_AFTER_START,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    TrainingRunSpec,
    TrainingRunStatus,
)
from accordion_operator.crd.schema import Names, crd_document, object_schema

#: Run names end up in label values and child names (`<run>-worker-<i>`, `<run>-launcher`).
MAX_RUN_NAME = 50


def _same(field: str) -> str:
    new, old = f"self.spec.{field}", f"oldSelf.spec.{field}"
    return (
        f"(has({new}) == has({old}) && (!has({new}) || {new} == {old}))"
        if field in _OPTIONAL_SPEC_FIELDS
        else f"{new} == {old}"
    )


_OPTIONAL_SPEC_FIELDS = {
    TrainingRunSpec.model_fields[name].alias or name
    for name, f in TrainingRunSpec.model_fields.items()
    if f.default is None
}


def immutable_rule() -> dict[str, Any]:
    same = " && ".join(_same(f) for f in IMMUTABLE_AFTER_START)
    return cel(
        f"!has(oldSelf.status) || !has(oldSelf.status.startTime) || ({same})",
        "spec." + ", spec.".join(IMMUTABLE_AFTER_START) + " are immutable once the run has "
        "started (status.startTime is set); create a new TrainingRun instead",
        reason="FieldValueForbidden",
    )


NAMES = Names(KIND, PLURAL, SINGULAR, SHORT_NAMES)


def open_api_schema() -> dict[str, Any]:
    return object_schema(
        NAMES,
        "An elastic Horovod + TensorFlow training run on GPUs.",
        (TrainingRunSpec, TrainingRunStatus),
        (MAX_RUN_NAME, "children are named <run>-worker-<i>"),
        [immutable_rule()],
    )


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.workerSummary",
        "description": "current/desired worker pods",
    },
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
    {"name": "Epoch", "type": "integer", "jsonPath": ".status.training.epoch"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Admitted",
        "type": "string",
        "priority": 1,
        "jsonPath": ".status.conditions[?(@.type=='Admitted')].reason",
    },
    {
        "name": "Priority-Class",
        "type": "string",
        "priority": 1,
        "jsonPath": ".spec.priorityClassName",
    },
]


def build_crd() -> dict[str, Any]:
    return crd_document(
        NAMES,
        open_api_schema(),
        {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.workers.replicas",
                "statusReplicasPath": ".status.currentWorkers",
                "labelSelectorPath": ".status.selector",
            },
        },
        PRINTER_COLUMNS,
    )
