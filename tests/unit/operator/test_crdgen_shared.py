"""What both CRDs (TrainingRun, Experiment) owe: generated from the models with a drift check,
and every string, list and map bounded (the apiserver's CEL cost budget and etcd object size)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from crd_support import walk

from accordion_operator import crdgen, crdgen_experiment

#: each generator with an edit that makes its committed YAML stale
GENERATORS = [
    pytest.param(crdgen, ("maxLength: 63", "maxLength: 64"), id="trainingrun"),
    pytest.param(crdgen_experiment, ("maxItems: 32", "maxItems: 33"), id="experiment"),
]


@pytest.mark.parametrize(("gen", "edit"), GENERATORS)
def test_committed_crd_matches_the_models(gen: ModuleType, edit: tuple[str, str]) -> None:
    assert gen.main(["--check"]) == 0, f"run: python -m {gen.__name__}"


@pytest.mark.parametrize(("gen", "edit"), GENERATORS)
def test_check_fails_on_drift(gen: ModuleType, edit: tuple[str, str], tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    text = gen.render()
    assert edit[0] in text
    stale.write_text(text.replace(*edit, 1))
    assert gen.main(["--check", "--output", str(stale)]) == 1


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
