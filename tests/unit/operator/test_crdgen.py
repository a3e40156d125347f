"""The CRD YAML is generated from the models and every field is bounded."""

from __future__ import annotations

from typing import Any

import yaml

from accordion_operator import crdgen


def test_committed_crd_matches_the_models() -> None:
    assert crdgen.main(["--check"]) == 0, "run: python -m accordion_operator.crdgen"


def test_check_fails_on_drift(tmp_path: Any) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdgen.render().replace("maxLength: 63", "maxLength: 64", 1))
    assert crdgen.main(["--check", "--output", str(stale)]) == 1


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in (node.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_every_string_list_and_map_is_bounded() -> None:
    schema = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unbounded = []
    for path, node in _walk(schema):
        if path in ("", ".apiVersion", ".kind", ".metadata"):
            continue
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(path)
        if kind == "object" and node.get("x-kubernetes-preserve-unknown-fields"):
            assert path == ".spec.hyperparameters", f"free-form field {path}"
            assert node["maxProperties"] <= 64
    assert unbounded == []


def test_structural_schema_has_no_json_schema_leftovers() -> None:
    text = crdgen.render()
    for word in ("$ref", "anyOf", "title:", "propertyNames", "patternProperties", "null"):
        assert word not in text, word


def test_subresources_columns_and_names() -> None:
    crd = yaml.safe_load(crdgen.render())
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
