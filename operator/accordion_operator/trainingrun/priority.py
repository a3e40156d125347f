"""A run's priority as the cluster admin set it (pure): the PriorityClass named in
`spec.priorityClassName`, and whether the namespace's ResourceQuotas let the run use it at all.

Why PriorityClasses and not a number in the spec: any run author could write a number, and the
allocator preempts by it. PriorityClasses are cluster-scoped (only cluster admins create them),
and a namespace admin cannot lift a ResourceQuota a cluster admin put on a class (`scopeSelector`
on `PriorityClass`): those two decide who may use high priority, as they do for every other pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from accordion_operator.api.trainingrun import (
    REASON_PRIORITY_CLASS_NOT_FOUND,
    REASON_QUOTA_EXCEEDED,
)

#: set to "true" by a cluster admin on a PriorityClass whose runs may preempt runs of other
#: namespaces (without it, a run preempts only runs of its own namespace)
ANNOTATION_PREEMPT_OTHER_NAMESPACES = "accordion.dev/preempt-other-namespaces"

#: whom a run may take GPUs from when its minimum does not fit: nobody (the class's
#: `preemptionPolicy: Never`), lower-priority runs of its own namespace, or of any namespace
Preempts = Literal["never", "namespace", "cluster"]


@dataclass(frozen=True)
class PriorityClassInfo:
    name: str
    value: int
    global_default: bool = False
    preempts: Preempts = "namespace"


@dataclass(frozen=True)
class ScopeExpression:
    """One `scopeSelector.matchExpressions` item of a ResourceQuota."""

    scope: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuotaInfo:
    namespace: str
    name: str
    #: spec.hard, as the apiserver's quantities (strings)
    hard: Mapping[str, str]
    #: spec.scopes and spec.scopeSelector, ANDed
    scopes: tuple[str, ...] = ()
    expressions: tuple[ScopeExpression, ...] = ()


@dataclass(frozen=True)
class Priority:
    """What the allocator needs of a run's class."""

    value: int = 0
    preempts: Preempts = "namespace"
    #: the class name the run's pods carry (the globalDefault's when the spec names none)
    class_name: str | None = None


def class_from(body: Mapping[str, Any]) -> PriorityClassInfo:
    """A PriorityClass as the apiserver returns it."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    value = body.get("value")
    preempts: Preempts = "namespace"
    if body.get("preemptionPolicy") == "Never":
        preempts = "never"
    elif str(annotations.get(ANNOTATION_PREEMPT_OTHER_NAMESPACES, "")).lower() == "true":
        preempts = "cluster"
    return PriorityClassInfo(
        name=str(meta.get("name", "")),
        value=value if isinstance(value, int) and not isinstance(value, bool) else 0,
        global_default=body.get("globalDefault") is True,
        preempts=preempts,
    )


def quota_from(body: Mapping[str, Any]) -> QuotaInfo:
    """A ResourceQuota as the apiserver returns it."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    selector = spec.get("scopeSelector") or {}
    return QuotaInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        hard={str(k): str(v) for k, v in (spec.get("hard") or {}).items()},
        scopes=tuple(str(s) for s in spec.get("scopes") or ()),
        expressions=tuple(
            ScopeExpression(
                str(e.get("scopeName", "")),
                str(e.get("operator", "")),
                tuple(str(v) for v in e.get("values") or ()),
            )
            for e in selector.get("matchExpressions") or ()
        ),
    )


def resolve(
    class_name: str | None, classes: Mapping[str, PriorityClassInfo]
) -> Priority | tuple[str, str]:
    """The run's priority, or (reason, message) when its class does not exist. Without a class
    name, the cluster's globalDefault class (as the Priority admission gives the run's pods),
    else 0, as for any pod."""
    if class_name is None:
        default = _global_default(classes)
        if default is None:
            return Priority()
        return Priority(default.value, default.preempts, default.name)
    info = classes.get(class_name)
    if info is None:
        return (
            REASON_PRIORITY_CLASS_NOT_FOUND,
            f"spec.priorityClassName: PriorityClass {class_name!r} does not exist; use one "
            f"of: {', '.join(sorted(classes)) or '(none defined)'}, or ask a cluster admin",
        )
    return Priority(info.value, info.preempts, info.name)


def _global_default(classes: Mapping[str, PriorityClassInfo]) -> PriorityClassInfo | None:
    # The apiserver allows one globalDefault; if two slip in, the lowest value, as kube does.
    defaults = [c for c in classes.values() if c.global_default]
    return min(defaults, key=lambda c: (c.value, c.name)) if defaults else None


def quota_refusal(
    quotas: Sequence[QuotaInfo], class_name: str | None, pods: int, gpus: int, gpu_resource: str
) -> tuple[str, str] | None:
    """(reason, message) when a quota of the namespace can never admit the run's minimum:
    `pods` pods (launcher and `min` workers) with `gpus` GPUs, of priority class `class_name`.

    Only the hard limits are compared, not the namespace's current use: the apiserver still
    enforces use at each pod creation (the run then reports `PodCreationFailed` with its
    message). What this catches before any GPU is taken - other runs' included, by preemption -
    is a class the namespace may not use at all (`pods: 0` scoped to the class) or a minimum
    larger than the namespace's whole GPU quota."""
    needs = {"pods": pods, "count/pods": pods, f"requests.{gpu_resource}": gpus}
    for quota in sorted(quotas, key=lambda q: q.name):
        if not _applies(quota, class_name):
            continue
        for resource, need in needs.items():
            limit = parse_quantity(quota.hard.get(resource))
            if limit is not None and need > limit:
                scope = f" for priority class {class_name!r}" if _scoped(quota) else ""
                return (
                    REASON_QUOTA_EXCEEDED,
                    f"ResourceQuota {quota.namespace}/{quota.name} allows {resource}: "
                    f"{quota.hard[resource]}{scope}; the run's minimum needs {need}; lower "
                    "spec.workers.min, use another spec.priorityClassName, or ask a cluster "
                    "admin to raise the quota",
                )
    return None


def _scoped(quota: QuotaInfo) -> bool:
    return "PriorityClass" in quota.scopes or any(
        e.scope == "PriorityClass" for e in quota.expressions
    )


def _applies(quota: QuotaInfo, class_name: str | None) -> bool:
    """Whether the quota counts the run's pods. Scopes that depend on more than the pods'
    priority class (BestEffort, CrossNamespacePodAffinity, ...) are not judged here: the
    apiserver does at creation."""
    for scope in quota.scopes:
        if scope == "PriorityClass":
            if class_name is None:
                return False
        elif scope != "NotTerminating":  # the run's pods have no activeDeadlineSeconds
            return False
    for e in quota.expressions:
        if e.scope == "NotTerminating" and e.operator == "Exists":
            continue
        if e.scope != "PriorityClass":
            return False
        if e.operator == "In" and class_name not in e.values:
            return False
        if e.operator == "NotIn" and class_name in e.values:
            return False
        if e.operator == "Exists" and class_name is None:
            return False
        if e.operator == "DoesNotExist" and class_name is not None:
            return False
    return True


# (The node agent parses quantities too: accordion_dev and the operator are independent packages
# by contract, and a library for this one regular expression would be heavier than it.)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(text: str | None) -> float | None:
    """A Kubernetes quantity as a number, or None when absent or in a form not needed for
    counts (exponents): such a quota is left to the apiserver."""
    if text is None:
        return None
    m = _QUANTITY.match(text.strip())
    if m is None:
        return None
    return float(m.group(1)) * _SUFFIX[m.group(2)]
