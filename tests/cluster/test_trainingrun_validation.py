"""Table of invalid TrainingRuns (tests/data/trainingruns/invalid.yaml) against the real apiserver:
each is rejected with its message, or accepted and reported by the operator in status + Event."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_support import Api, Operator

from accordion_dev.cluster import Cluster
from accordion_dev.polling import poll

TABLE = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "data" / "trainingruns" / "invalid.yaml").read_text()
)
PLACEHOLDERS: dict[str, Any] = {
    "LONG4097": "x" * 4097,
    "LONG64": "v" * 64,
    "MANY33": [{"key": f"k{i}", "operator": "Exists"} for i in range(33)],
    "MANY65": {f"p{i}": i for i in range(65)},
}


def _expand(value: Any) -> Any:
    if isinstance(value, str) and value in PLACEHOLDERS:
        return copy.deepcopy(PLACEHOLDERS[value])
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _merge(base: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def body_for(case: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = _merge(TABLE["base"], _expand(case["patch"]))
    if "spec" in body:
        body["spec"].setdefault("tolerations", [{"operator": "Exists"}])
    if case["id"] != "name-too-long":
        body["metadata"]["name"] = case["id"][:50]
    return body


REJECT = [c for c in TABLE["cases"] if c["expect"] == "reject"]
STATUS = [c for c in TABLE["cases"] if c["expect"] == "status"]


def test_table_is_big_enough() -> None:
    assert len(TABLE["cases"]) >= 40
    assert len({c["id"] for c in TABLE["cases"]}) == len(TABLE["cases"])


@pytest.mark.parametrize("case", REJECT, ids=[c["id"] for c in REJECT])
def test_apiserver_rejects(api: Api, case: dict[str, Any]) -> None:
    r = api.create(body_for(case))
    assert r.status_code == 422, f"{case['id']}: accepted ({r.status_code}): {r.text[:300]}"
    assert case["message"] in r.json()["message"], r.json()["message"]


def test_model_and_results_are_immutable_once_started(api: Api, operator: Operator) -> None:
    api.secret()
    body = _merge(TABLE["base"], {"spec": {"tolerations": [{"operator": "Exists"}]}})
    body["metadata"]["name"] = "started"
    assert api.create(body).status_code == 201
    poll(lambda: api.status("started").get("startTime"), 30, what="run to start")
    url = f"/apis/accordion.dev/v1alpha1/namespaces/{api.ns}/trainingruns/started"
    merge = {"content-type": "application/merge-patch+json"}
    r = api.http.patch(url, json={"spec": {"model": {"builtin": "mnist-mlp"}}}, headers=merge)
    assert r.status_code == 422, r.text
    assert "immutable once the run has started" in r.json()["message"]
    r = api.http.patch(url, json={"spec": {"epochs": 99}}, headers=merge)
    assert r.status_code == 422, r.text
    # elastic bounds and the priority class stay editable
    r = api.http.patch(
        url, json={"spec": {"workers": {"max": 3}, "priorityClassName": "x"}}, headers=merge
    )
    assert r.status_code == 200, r.text


def test_operator_reports_what_the_schema_cannot(
    api: Api, operator: Operator, cluster: Cluster
) -> None:
    api.secret()
    api.secret("s3-incomplete", accessKey="only-this")
    for case in STATUS:
        r = api.create(body_for(case))
        assert r.status_code == 201, f"{case['id']}: {r.text[:300]}"
    for case in STATUS:
        name = case["id"][:50]
        cond = poll(lambda n=name: api.condition(n, "Admitted"), 30, what=f"{name} Admitted")
        assert cond["status"] == "False", (name, cond)
        assert cond["reason"] == case["reason"], (name, cond)
        assert len(cond["message"]) > 20, cond  # actionable, not just a code
        events = poll(
            lambda n=name, why=case["reason"]: [e for e in api.events(n) if e["reason"] == why],
            15,
            what=f"Event for {name}",
        )
        assert events[0]["type"] == "Warning"
        assert api.workers(name) == [], name
    assert api.pods() == []  # not even a launcher
    assert operator.alive()
