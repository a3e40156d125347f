"""Table of invalid Experiments (tests/data/experiments/invalid.yaml) against the real apiserver
with the generated CRD: each is rejected with its message (or, for what CEL cannot express,
reported by the operator in status)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from merge_patch import merge
from operator_support import ExpApi, Operator

from accordion_dev.polling import poll

TABLE = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "data" / "experiments" / "invalid.yaml").read_text()
)
REJECT = [c for c in TABLE["cases"] if c["expect"] == "reject"]
STATUS = [c for c in TABLE["cases"] if c["expect"] == "status"]


def body_for(case: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = merge(TABLE["base"], case.get("patch") or {})
    if "parameters" in case:
        body["spec"]["parameters"] = case["parameters"]
    if case["id"] != "name-too-long":
        body["metadata"]["name"] = case["id"]
    return body


def test_table_is_big_enough() -> None:
    assert len(REJECT) >= 20
    assert len({c["id"] for c in TABLE["cases"]}) == len(TABLE["cases"])


def test_the_base_is_valid(exp_api: ExpApi) -> None:
    """Otherwise every rejection below could be the base's fault."""
    r = exp_api.create(body_for({"id": "valid", "patch": {}}))
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    # defaults come from the schema
    assert spec["seed"] == 0
    assert spec["earlyStopping"]["algorithm"] == "none"
    assert spec["template"]["workers"]["gpusPerWorker"] == 1


@pytest.mark.parametrize("case", REJECT, ids=[c["id"] for c in REJECT])
def test_apiserver_rejects(exp_api: ExpApi, case: dict[str, Any]) -> None:
    r = exp_api.create(body_for(case))
    assert r.status_code == 422, f"{case['id']}: accepted ({r.status_code}): {r.text[:300]}"
    assert case["message"] in r.json()["message"], r.json()["message"]


def test_search_space_is_immutable(exp_api: ExpApi) -> None:
    assert exp_api.create(body_for({"id": "fixed", "patch": {}})).status_code == 201
    exp = exp_api.get("fixed")
    exp["spec"]["parameters"][0]["max"] = 0.5
    url = f"/apis/accordion.dev/v1alpha1/namespaces/{exp_api.ns}/experiments/fixed"
    r = exp_api.http.put(url, json=exp)
    assert r.status_code == 422, r.text
    assert "immutable" in r.json()["message"]
    # the budget stays editable
    exp = exp_api.get("fixed")
    exp["spec"]["maxRuns"] = 6
    assert exp_api.http.put(url, json=exp).status_code == 200


def test_operator_reports_what_the_schema_cannot(exp_api: ExpApi, operator: Operator) -> None:
    for case in STATUS:
        r = exp_api.create(body_for(case))
        assert r.status_code == 201, f"{case['id']}: {r.text[:300]}"
    for case in STATUS:
        name = case["id"]
        cond = poll(
            lambda n=name: (
                exp_api.condition(n, "Failed").get("status") == "True"
                and exp_api.condition(n, "Failed")
            ),
            30,
            what=f"{name} Failed",
        )
        assert cond["reason"] == case["reason"], cond
        assert len(cond["message"]) > 20, cond
        assert exp_api.runs(name) == {}
    assert operator.alive()
