"""Render the Experiment CRD from the pydantic models, with `crdgen`'s schema conversion.

`python -m accordion_operator.crdgen_experiment` rewrites `crds/experiments.accordion.dev.yaml`;
`--check` exits 1 when the file differs from what the models produce (a unit test runs it).
Kept apart from `crdgen` (the TrainingRun CRD) so the two can evolve without touching each
other; both share `crdgen.model_schema`, the one pydantic -> structural-schema conversion.
"""

from __future__ import annotations

from typing import Any

from accordion_operator import crdgen
from accordion_operator.api.common import GROUP, cel
from accordion_operator.api.experiment import (
    KIND,
    MAX_EXPERIMENT_NAME,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    ExperimentSpec,
    ExperimentStatus,
)
from accordion_operator.crdgen import REPO, model_schema

CRD_PATH = REPO / "crds" / f"{PLURAL}.{GROUP}.yaml"


def open_api_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A hyperparameter search that runs TrainingRuns made from a template.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(ExperimentSpec),
            "status": model_schema(ExperimentStatus, in_status=True),
        },
        "x-kubernetes-validations": [
            cel(
                f"size(self.metadata.name) <= {MAX_EXPERIMENT_NAME}",
                f"Experiment names must be at most {MAX_EXPERIMENT_NAME} characters (its runs "
                "are named <experiment>-<trial:03d>)",
            ),
        ],
    }


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
    return crdgen.crd_document(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        schema=open_api_schema(),
        subresources={"status": {}},
        printer_columns=PRINTER_COLUMNS,
    )


def render() -> str:
    return crdgen.render_crd("accordion_operator.crdgen_experiment", build_crd())


def main(argv: list[str] | None = None) -> int:
    return crdgen.cli("accordion_operator.crdgen_experiment", render, CRD_PATH, argv)


if __name__ == "__main__":
    raise SystemExit(main())
