"""A trial's TrainingRun: its name, labels, annotations and body, and how it is stopped (pure).

How a trial is stopped: the Experiment sets the child's `spec.suspend` (the TrainingRun controller
then releases its pods and GPUs and keeps its checkpoints and reported metrics) and the
annotation `accordion.dev/stopped: Pruned|Stopped`, which marks the trial's outcome for good.
"""

from __future__ import annotations

import json
from typing import Any

from accordion_operator.api.common import API_VERSION
from accordion_operator.api.experiment import (
    Experiment,
)
from accordion_operator.api.trainingrun import KIND as RUN_KIND
from accordion_operator.core.objects import (
    EXPERIMENTS,
    LABEL_EXPERIMENT,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    owner_reference,
)
from accordion_operator.experiment import search

LABEL_TRIAL = "accordion.dev/trial"


#: JSON object of the trial's parameters: the search is rebuilt from it after a restart.
ANNOTATION_PARAMETERS = "accordion.dev/parameters"


ANNOTATION_TRIAL = "accordion.dev/trial"


ANNOTATION_GRID_ID = "accordion.dev/grid-id"


#: Which sampler suggested the trial (`search.SamplerName`): informational, never read back.
ANNOTATION_SAMPLER = "accordion.dev/sampler"


#: Set (with spec.suspend) when the experiment stops a run: `Pruned` or `Stopped`.
ANNOTATION_STOPPED = "accordion.dev/stopped"


STOP_PRUNED = "Pruned"


STOP_ENDED = "Stopped"


def run_name(experiment: str, trial: int) -> str:
    return f"{experiment}-{trial:03d}"


def build_trial_run(exp: Experiment, s: search.Suggestion) -> dict[str, Any]:
    """The child TrainingRun of a trial: the template, its parameters merged into the
    hyperparameters (so the same training code runs standalone and in a search)."""
    spec = exp.spec.template.model_dump(by_alias=True, exclude_none=True, mode="json")
    spec["hyperparameters"] = {**spec.get("hyperparameters", {}), **s.params}
    # A trial must outlive its end: the search is rebuilt from it (it goes with the Experiment).
    spec.pop("ttlSecondsAfterFinished", None)
    annotations = {
        ANNOTATION_TRIAL: str(s.number),
        ANNOTATION_PARAMETERS: json.dumps(s.params, sort_keys=True),
        ANNOTATION_SAMPLER: s.sampler,
    }
    if s.grid_id is not None:
        annotations[ANNOTATION_GRID_ID] = str(s.grid_id)
    return {
        "apiVersion": API_VERSION,
        "kind": RUN_KIND,
        "metadata": {
            "name": run_name(exp.metadata.name, s.number),
            "namespace": exp.metadata.namespace,
            "labels": {
                LABEL_NAME: "accordion",
                LABEL_MANAGED_BY: MANAGED_BY,
                LABEL_EXPERIMENT: exp.metadata.name,
                LABEL_TRIAL: str(s.number),
            },
            "annotations": annotations,
            "ownerReferences": [owner_reference(EXPERIMENTS, exp.metadata.name, exp.metadata.uid)],
        },
        "spec": spec,
    }


def stop_patch(why: str) -> dict[str, Any]:
    """Merge patch that stops a child gracefully and marks its outcome."""
    return {"metadata": {"annotations": {ANNOTATION_STOPPED: why}}, "spec": {"suspend": True}}
