"""The TrainingRun CRD: what only it has (shared checks: test_crdgen_shared.py)."""

from __future__ import annotations

from typing import Any

import yaml
from crd_support import walk

from accordion_operator.crd import trainingrun as crdgen
from accordion_operator.crd.schema import render_crd


def test_hyperparameters_are_the_only_free_form_field() -> None:
    schema = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    free = [p for p, n in walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert free == [".spec.hyperparameters"]


def test_structural_schema_has_no_json_schema_leftovers() -> None:
    text = render_crd(crdgen.build_crd())
    for word in ("$ref", "anyOf", "title:", "propertyNames", "patternProperties", "null"):
        assert word not in text, word


def test_subresources_columns_and_names() -> None:
    crd = yaml.safe_load(render_crd(crdgen.build_crd()))
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["tr"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.workers.replicas",
        "statusReplicasPath": ".status.currentWorkers",
        "labelSelectorPath": ".status.selector",
    }
    cols = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(cols)[:5] == ["Phase", "Workers", "GPUs", "Epoch", "Age"]
    assert cols["Admitted"] == ".status.conditions[?(@.type=='Admitted')].reason"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    conds = status["properties"]["conditions"]
    assert conds["x-kubernetes-list-type"] == "map"
    assert conds["x-kubernetes-list-map-keys"] == ["type"]
    assert "default" not in str(status)  # status is written, never defaulted


def test_cel_rules_all_carry_messages() -> None:
    rules = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(node.get("x-kubernetes-validations") or [])
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(crdgen.build_crd())
    assert len(rules) >= 8
    assert all(r.get("message") for r in rules)
    immutable = crdgen.immutable_rule()
    assert "oldSelf.status.startTime" in immutable["rule"]
    assert "self.spec.model == oldSelf.spec.model" in immutable["rule"]
