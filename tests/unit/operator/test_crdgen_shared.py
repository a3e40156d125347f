"""What both CRDs (TrainingRun, Experiment) owe: generated from the models with a drift check,
and every string, list and map bounded (the apiserver's CEL cost budget and etcd object size)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from crd_support import walk

from accordion_operator.crd import experiment as experiment_crd
from accordion_operator.crd import trainingrun as trainingrun_crd
from accordion_operator.crd.__main__ import CRDS, main
from accordion_operator.crd.schema import render_crd

#: each generator with an edit that makes its committed YAML stale
GENERATORS = [
    pytest.param(trainingrun_crd, ("maxLength: 63", "maxLength: 64"), id="trainingrun"),
    pytest.param(experiment_crd, ("maxItems: 32", "maxItems: 33"), id="experiment"),
]


def test_committed_crds_match_the_models() -> None:
    assert main(["--check"]) == 0, "run: make crds"


@pytest.mark.parametrize(("gen", "edit"), GENERATORS)
def test_check_fails_on_drift(gen: ModuleType, edit: tuple[str, str], tmp_path: Path) -> None:
    assert main(["--output-dir", str(tmp_path)]) == 0
    assert main(["--check", "--output-dir", str(tmp_path)]) == 0
    (name,) = [n for n, build in CRDS.items() if build is gen.build_crd]
    text = render_crd(gen.build_crd())
    assert (tmp_path / name).read_text() == text
    assert edit[0] in text
    (tmp_path / name).write_text(text.replace(*edit, 1))
    assert main(["--check", "--output-dir", str(tmp_path)]) == 1


@pytest.mark.parametrize(("gen", "edit"), GENERATORS)
def test_every_string_list_and_map_is_bounded(gen: ModuleType, edit: tuple[str, str]) -> None:
    schema: dict[str, Any] = gen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unbounded = []
    for path, node in walk(schema):
        if path in ("", ".apiVersion", ".kind", ".metadata"):
            continue
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        free_form = "additionalProperties" in node or "properties" not in node
        if kind == "object" and free_form and "maxProperties" not in node:
            unbounded.append(path)
        if kind == "object" and node.get("x-kubernetes-preserve-unknown-fields"):
            # hyperparameters (and the Experiment's parameter values) are user-defined maps
            assert node["maxProperties"] <= 64, path
    assert unbounded == []
