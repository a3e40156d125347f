"""Render the TrainingRun CRD from the pydantic models (the one source of truth).

`python -m accordion_operator.crdgen` rewrites `crds/trainingruns.accordion.dev.yaml`;
`--check` exits 1 when the committed file differs from what the models produce (CI and a unit
test run it, so the models and the YAML cannot drift).

Pydantic's JSON Schema is close to a structural OpenAPI v3 schema; the differences are fixed here:
`$ref`s are inlined, `Optional[X]` (anyOf X|null) becomes an optional X, titles, `null` defaults
and `propertyNames` (unsupported by the apiserver) are dropped, and object defaults become `{}`
so that the apiserver applies the nested defaults itself.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from accordion_operator.api.common import GROUP, VERSION, cel
from accordion_operator.api.trainingrun import (
    IMMUTABLE_AFTER_START,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    TrainingRunSpec,
    TrainingRunStatus,
)

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / f"{PLURAL}.{GROUP}.yaml"
#: Run names end up in label values and child names (`<run>-worker-<i>`, `<run>-launcher`).
MAX_RUN_NAME = 50

_DROP = {"title", "propertyNames"}


def _strip_nulls(value: Any) -> Any:
    """A model default dumped by pydantic, without the unset (None) optional fields."""
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value


def _inline(node: Any, defs: dict[str, Any], in_status: bool) -> Any:
    if isinstance(node, list):
        return [_inline(x, defs, in_status) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"unions other than Optional[X] need WithJsonSchema: {options}")
        node = {**options[0], **node}
        if "$ref" in node:
            return _inline(node, defs, in_status)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        # free-form by design (see the model): no value schema at all
        node.pop("patternProperties", None)
        node.pop("additionalProperties", None)
    if "patternProperties" in node:
        # dict keys with a pattern: the apiserver has no patternProperties; keep the value schema
        (value_schema,) = node.pop("patternProperties").values()
        node["additionalProperties"] = value_schema
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "default":
            if value is None or in_status:
                continue
            value = _strip_nulls(value)
        if key == "properties":
            out[key] = {k: _inline(v, defs, in_status) for k, v in value.items()}
        elif key in ("additionalProperties", "items"):
            out[key] = _inline(value, defs, in_status)
        else:
            out[key] = value
    return out


def model_schema(model: type[Any], in_status: bool = False) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    schema: dict[str, Any] = _inline(raw, defs, in_status)
    return schema


def _same(field: str) -> str:
    new, old = f"self.spec.{field}", f"oldSelf.spec.{field}"
    return (
        f"(has({new}) == has({old}) && (!has({new}) || {new} == {old}))"
        if field in _OPTIONAL_SPEC_FIELDS
        else f"{new} == {old}"
    )


_OPTIONAL_SPEC_FIELDS = {
    TrainingRunSpec.model_fields[name].alias or name
    for name, f in TrainingRunSpec.model_fields.items()
    if f.default is None
}


def immutable_rule() -> dict[str, Any]:
    same = " && ".join(_same(f) for f in IMMUTABLE_AFTER_START)
    return cel(
        f"!has(oldSelf.status) || !has(oldSelf.status.startTime) || ({same})",
        "spec." + ", spec.".join(IMMUTABLE_AFTER_START) + " are immutable once the run has "
        "started (status.startTime is set); create a new TrainingRun instead",
        reason="FieldValueForbidden",
    )


def open_api_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "An elastic Horovod + TensorFlow training run on GPUs.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(TrainingRunSpec),
            "status": model_schema(TrainingRunStatus, in_status=True),
        },
        "x-kubernetes-validations": [
            cel(
                f"size(self.metadata.name) <= {MAX_RUN_NAME}",
                f"TrainingRun names must be at most {MAX_RUN_NAME} characters (children are "
                "named <run>-worker-<i>)",
            ),
            immutable_rule(),
        ],
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Workers",
        "type": "string",
        "jsonPath": ".status.workerSummary",
        "description": "current/desired worker pods",
    },
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
    {"name": "Epoch", "type": "integer", "jsonPath": ".status.training.epoch"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Admitted",
        "type": "string",
        "priority": 1,
        "jsonPath": ".status.conditions[?(@.type=='Admitted')].reason",
    },
    {"name": "Priority", "type": "integer", "priority": 1, "jsonPath": ".spec.priority"},
]


def crd_document(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: Sequence[str],
    schema: dict[str, Any],
    subresources: dict[str, Any],
    printer_columns: list[dict[str, Any]],
) -> dict[str, Any]:
    """A namespaced CRD of `accordion.dev/v1alpha1` (one served and stored version)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "accordion"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["accordion"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": printer_columns,
                }
            ],
        },
    }


def render_crd(module: str, crd: dict[str, Any]) -> str:
    """The CRD file's text, with a header naming the generator that wrote it."""
    header = (
        f"# GENERATED by `python -m {module}` from accordion_operator/api/\n"
        "# -- do not edit; change the pydantic models and regenerate (a unit test fails on "
        "drift).\n"
    )
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def build_crd() -> dict[str, Any]:
    return crd_document(
        kind=KIND,
        plural=PLURAL,
        singular=SINGULAR,
        short_names=SHORT_NAMES,
        schema=open_api_schema(),
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.workers.replicas",
                "statusReplicasPath": ".status.currentWorkers",
                "labelSelectorPath": ".status.selector",
            },
        },
        printer_columns=PRINTER_COLUMNS,
    )


def render() -> str:
    return render_crd("accordion_operator.crdgen", build_crd())


def cli(module: str, render_crd: Callable[[], str], default: Path, argv: list[str] | None) -> int:
    """`python -m <module> [--check] [--output PATH]`: write the CRD, or fail if it is stale.
    Shared by every CRD generator of the package."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("--check", action="store_true", help="fail if the CRD file is stale")
    parser.add_argument("--output", type=Path, default=default)
    args = parser.parse_args(argv)
    text = render_crd()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(), text.splitlines(), str(args.output), "generated", lineterm=""
            )
            print("\n".join(list(diff)[:80]), file=sys.stderr)
            print(f"{args.output} is stale: run python -m {module}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli("accordion_operator.crdgen", render, CRD_PATH, argv)


if __name__ == "__main__":
    raise SystemExit(main())
