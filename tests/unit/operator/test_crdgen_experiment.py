"""The Experiment CRD YAML is generated from the models, and its schema is bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accordion_operator import crdgen_experiment


def test_committed_crd_matches_the_models() -> None:
    assert crdgen_experiment.main(["--check"]) == 0, (
        "run: python -m accordion_operator.crdgen_experiment"
    )


def test_check_fails_on_drift(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdgen_experiment.render().replace("maxItems: 32", "maxItems: 33", 1))
    assert crdgen_experiment.main(["--check", "--output", str(stale)]) == 1


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
    crd = crdgen_experiment.build_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unbounded = []
    for path, node in _walk(schema):
        if path in ("", ".apiVersion", ".kind", ".metadata", ".spec", ".status"):
            continue
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
        if kind == "array" and "maxItems" not in node:
            unbounded.append(path)
        if kind == "object" and "properties" not in node and "maxProperties" not in node:
            unbounded.append(path)
    assert unbounded == []


def test_names_columns_and_cel_messages() -> None:
    crd = crdgen_experiment.build_crd()
    assert crd["spec"]["names"]["shortNames"] == ["exp"]
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == [
        "Phase",
        "Best",
        "Runs",
        "Age",
    ]
    assert version["subresources"] == {"status": {}}
    rules = [
        r
        for _, node in _walk(version["schema"]["openAPIV3Schema"])
        for r in node.get("x-kubernetes-validations") or []
    ]
    assert len(rules) >= 10
    assert all(r.get("message") for r in rules)
