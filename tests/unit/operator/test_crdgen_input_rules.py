"""Input rules of both CRDs (docs/trainingrun.md, "Input rules"): no spec string holds a control
character, object-store paths hold no `.`/`..` segment, and every pattern means the same to the
apiserver (RE2, ECMA-262 in OpenAPI) as to the operator (pydantic), which parses every object
through the same models."""

from __future__ import annotations

import re
from typing import Any

import pytest
from crd_support import walk
from pydantic import BaseModel, ValidationError
from trainingrun_factory import make_body

from accordion_operator.api.trainingrun import ModelSource, ObjectStore, TrainingRun
from accordion_operator.crd import experiment as experiment_crd
from accordion_operator.crd import trainingrun as trainingrun_crd
from accordion_operator.trainingrun.observe import parse_run

CONTROLS = [chr(c) for c in (*range(0x20), 0x7F)]
#: A command may be a script: its lines and indentation.
SCRIPT_WHITESPACE = {"\t", "\n"}


def _schema(gen: Any) -> dict[str, Any]:
    schema: dict[str, Any] = gen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


SCHEMAS = [
    pytest.param(_schema(trainingrun_crd), id="trainingrun"),
    pytest.param(_schema(experiment_crd), id="experiment"),
]
TRAININGRUN = dict(walk(_schema(trainingrun_crd)))


def crd_accepts(node: dict[str, Any], value: str) -> bool:
    """What the apiserver decides for a string node. `fullmatch`: Python's `$` also matches
    before a final newline, RE2's and ECMA-262's (without the m flag) do not."""
    return (
        node.get("minLength", 0) <= len(value) <= node["maxLength"]
        and re.fullmatch(node.get("pattern", ".*"), value, re.S) is not None
    )


def model_accepts(model: type[BaseModel], body: dict[str, Any]) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("schema", SCHEMAS)
def test_no_spec_string_takes_a_control_character(schema: dict[str, Any]) -> None:
    strings = [
        (path, node)
        for path, node in walk(schema["properties"]["spec"], ".spec")
        if node.get("type") == "string" and "enum" not in node
    ]
    assert len(strings) >= 12
    for path, node in strings:
        allowed = SCRIPT_WHITESPACE if path.endswith(".model.command") else set()
        for c in CONTROLS:
            assert crd_accepts(node, f"a{c}b") is (c in allowed), (path, c)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_every_pattern_means_the_same_to_every_engine(schema: dict[str, Any]) -> None:
    """Plain classes, groups and quantifiers only: no lookaround or flags (RE2 has none), no
    `\\s`/`\\d`/`\\w`/`\\b`/`\\p` (ASCII in RE2, Unicode in pydantic's Rust regex and in
    ECMA-262's `\\s`), no `\\u` escapes (RE2 reads none); control characters as `\\xHH`."""
    patterns = {path: node["pattern"] for path, node in walk(schema) if "pattern" in node}
    assert len(patterns) >= 10
    for path, pattern in patterns.items():
        assert "(?" not in pattern, path
        assert not re.search(r"\\[sSdDwWbBpPu]", pattern), path
        assert not any(c in pattern for c in CONTROLS), path
        re.compile(pattern)


# --- object-store paths --------------------------------------------------------------------------

#: value -> (fine as data/results prefix, fine as model.bucketObject)
PATHS = {
    "": (True, False),
    "mnist": (True, True),
    "datasets/mnist/v1.2": (True, True),
    "datasets/mnist/": (True, True),
    "/mnist": (True, False),  # the trainer strips a prefix's slashes; a bucketObject's bucket
    "a//b": (True, True),
    "s3://code/model.zip": (True, True),
    ".hidden/x": (True, True),
    "..dots/...x/y..": (True, True),
    "ünï/data": (True, True),
    "code/my model.zip": (False, True),  # S3 keys may hold spaces; prefixes never did
    "..": (False, False),
    ".": (False, False),
    "../x": (False, False),
    "a/../b": (False, False),
    "a/..": (False, False),
    "/../x": (False, False),
    "./x": (False, False),
    "a/./b": (False, False),
    "a/.": (False, False),
    "ünï/../..\x00": (False, False),  # issue 16
    "ünï\x00": (False, False),
    "a\tb": (False, False),
    "data\n": (False, False),
    "x\x7f": (False, False),
}


@pytest.mark.parametrize(("value", "expected"), PATHS.items(), ids=repr)
def test_object_store_paths(value: str, expected: tuple[bool, bool]) -> None:
    as_prefix, as_object = expected
    for where in (".spec.data.prefix", ".spec.results.prefix"):
        assert crd_accepts(TRAININGRUN[where], value) is as_prefix, where
    store = {"endpoint": "minio:9000", "bucket": "data", "credentialsSecret": {"name": "s3"}}
    assert model_accepts(ObjectStore, {**store, "prefix": value}) is as_prefix
    assert crd_accepts(TRAININGRUN[".spec.model.bucketObject"], value) is as_object
    code = {"bucketObject": value, "command": "python train.py"}
    assert model_accepts(ModelSource, code) is as_object


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("path", "/code/train.py", True),
        ("path", "/code/../shared/train.py", True),  # inside the user's own image
        ("path", "code/train.py", False),
        ("path", "/code/train.py\x00", False),
        ("command", "python train.py --epochs 3", True),
        ("command", "set -e\n\tpython train.py\n", True),
        ("command", "python train.py\r", False),
        ("command", "python\x00train.py", False),
        ("command", "echo \x1b[2J", False),
    ],
)
def test_model_path_and_command(field: str, value: str, ok: bool) -> None:
    assert crd_accepts(TRAININGRUN[f".spec.model.{field}"], value) is ok
    assert model_accepts(ModelSource, {"path": "/code/t.py", "command": "t", field: value}) is ok


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"results": {"prefix": "ünï/../..\x00"}}, "spec.results.prefix"),
        ({"image": "busybox\x00"}, "spec.image"),
        ({"nodeSelector": {"pool": "gpu\x1b"}}, "spec.nodeSelector.pool"),
        # the apiserver cannot check map keys (no patternProperties); the operator does
        ({"nodeSelector": {"pool\x00": "gpu"}}, "spec.nodeSelector.pool\x00.[key]"),
        ({"tolerations": [{"key": "k", "value": "v\n"}]}, "spec.tolerations.0.value"),
    ],
)
def test_the_operator_reports_a_run_the_apiserver_would_refuse(
    patch: dict[str, Any], where: str
) -> None:
    """A run stored before these rules existed does not parse: InvalidSpec, not a crash."""
    got = parse_run(make_body(spec=patch))
    assert isinstance(got, tuple)
    reason, message = got
    assert reason == "InvalidSpec"
    assert message.startswith(f"{where}: String should match pattern")
    assert isinstance(parse_run(make_body(spec={"results": {"prefix": "ünï/data"}})), TrainingRun)


def test_experiment_strings_and_learning_rate_ranges() -> None:
    schema = dict(walk(_schema(experiment_crd)))
    parameter = schema[".spec.parameters[]"]
    assert not crd_accepts(schema[".spec.parameters[].values[]"], "adam\x00")
    assert not crd_accepts(schema[".spec.objective.metric"], "val_accuracy\n")
    assert crd_accepts(schema[".spec.objective.metric"], "val_accuracy")
    rules = {r["message"]: r["rule"] for r in parameter["x-kubernetes-validations"]}
    rule = rules["learning_rate and lr must be > 0: set min > 0"]
    assert rule.startswith("!(self.name in ['learning_rate', 'lr'])")
    assert rule.endswith("self.min > 0.0")
    # the template is a TrainingRun spec, with the same rules
    template = schema[".spec.template.results.prefix"]
    assert template == TRAININGRUN[".spec.results.prefix"]
