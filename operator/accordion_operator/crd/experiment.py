"""The Experiment CRD from the pydantic models: schema, validation rules, printer columns."""

from __future__ import annotations

from typing import Any

from accordion_operator.api.experiment import (
    KIND,
    MAX_EXPERIMENT_NAME,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    ExperimentSpec,
    ExperimentStatus,
)
from accordion_operator.crd.schema import Names, crd_document, object_schema

NAMES = Names(KIND, PLURAL, SINGULAR, SHORT_NAMES)


def open_api_schema() -> dict[str, Any]:
    return object_schema(
        NAMES,
        "A hyperparameter search that runs TrainingRuns made from a template.",
        (ExperimentSpec, ExperimentStatus),
        (MAX_EXPERIMENT_NAME, "its runs are named <experiment>-<trial:03d>"),
    )


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Best",
        "type": "number",
        "jsonPath": ".status.bestRun.metric",
        "description": "objective metric of the best finished run",
    },
    {
        "name": "Runs",
        "type": "string",
        "jsonPath": ".status.runsSummary",
        "description": "finished/maxRuns",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Algorithm", "type": "string", "priority": 1, "jsonPath": ".spec.algorithm"},
    {"name": "Metric", "type": "string", "priority": 1, "jsonPath": ".spec.objective.metric"},
    {"name": "Best-Run", "type": "string", "priority": 1, "jsonPath": ".status.bestRun.name"},
]


def build_crd() -> dict[str, Any]:
    return crd_document(
        NAMES,
        open_api_schema(),
        {"status": {}},
        PRINTER_COLUMNS,
    )
