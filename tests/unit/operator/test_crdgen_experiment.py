"""The Experiment CRD: what only it has (shared checks: test_crdgen_shared.py)."""

from __future__ import annotations

from crd_support import walk

from accordion_operator.crd import experiment as crdgen_experiment


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
        for _, node in walk(version["schema"]["openAPIV3Schema"])
        for r in node.get("x-kubernetes-validations") or []
    ]
    assert len(rules) >= 10
    assert all(r.get("message") for r in rules)
