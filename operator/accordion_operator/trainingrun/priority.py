"""A run's priority as the cluster admin set it (pure): the PriorityClass named in
`spec.priorityClassName`, and whether the namespace's ResourceQuotas let the run use it at all.

Why PriorityClasses and not a number in the spec: any run author could write a number, and the
allocator preempts by it. PriorityClasses are cluster-scoped (only cluster admins create them),
and a namespace admin cannot lift a ResourceQuota a cluster admin put on a class (`scopeSelector`
on `PriorityClass`): those two decide who may use high priority, as they do for every other pod.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from accordion_operator.api.trainingrun import (
    REASON_PRIORITY_CLASS_NOT_FOUND,
    REASON_QUOTA_EXCEEDED,
)
from accordion_operator.trainingrun.allocator import GpuQuota

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
    #: status.hard: the limits the apiserver's admission enforces, which the quota controller
    #: copies from spec.hard a moment after each edit (None: not yet)
    enforced: Mapping[str, str] | None = None


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
        enforced=(
            {str(k): str(v) for k, v in status_hard.items()}
            if isinstance(status_hard := (body.get("status") or {}).get("hard"), Mapping)
            else None
        ),
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


#: a class filter: (only these classes, or None for all; never these) - None stands for "no
#: class" in both sets (`allocator.GpuQuota.covers`)
ClassFilter = tuple[frozenset[str | None] | None, frozenset[str | None]]


def _class_filter(quota: QuotaInfo) -> ClassFilter | None:
    """Which priority classes' pods the quota counts, or None when it counts no pod of a run.
    Scopes that depend on more than the pods' priority class (BestEffort, Terminating,
    CrossNamespacePodAffinity, ...) never match a run's pods (they have requests, no
    activeDeadlineSeconds and no cross-namespace affinity); NotTerminating always does."""
    only: frozenset[str | None] | None = None
    exclude: set[str | None] = set()

    def narrow(allowed: frozenset[str | None]) -> None:
        nonlocal only
        only = allowed if only is None else only & allowed

    for scope in quota.scopes:
        if scope == "PriorityClass":
            exclude.add(None)  # the scope alone: pods that have a class
        elif scope != "NotTerminating":
            return None
    for e in quota.expressions:
        if e.scope == "NotTerminating" and e.operator == "Exists":
            continue
        if e.scope != "PriorityClass":
            return None
        if e.operator == "In":
            narrow(frozenset(e.values))
        elif e.operator == "NotIn":
            exclude.update(e.values)
        elif e.operator == "Exists":
            exclude.add(None)
        elif e.operator == "DoesNotExist":
            narrow(frozenset({None}))
        else:
            return None  # an operator the apiserver would not have accepted
    return only, frozenset(exclude)


def _applies(quota: QuotaInfo, class_name: str | None) -> bool:
    """Whether the quota counts the run's pods (of priority class `class_name`)."""
    found = _class_filter(quota)
    if found is None:
        return False
    only, exclude = found
    return (only is None or class_name in only) and class_name not in exclude


def gpu_quotas(quotas: Iterable[QuotaInfo], gpu_resource: str) -> list[GpuQuota]:
    """The allocator's view of the quotas that cap the GPUs of runs' pods: every quota with a
    hard `requests.<gpu_resource>` (the only form the apiserver accepts for an extended
    resource) that counts pods of some run (unscoped, or scoped to priority classes). A limit
    in a form that is not a plain count is left to the apiserver (as in `quota_refusal`).
    The limit is the lower of spec.hard and status.hard."""
    resource = f"requests.{gpu_resource}"
    out = []
    for quota in quotas:
        limit = parse_quantity(quota.hard.get(resource))
        found = _class_filter(quota)
        if limit is None or found is None:
            continue
        # The lower of spec.hard and status.hard: a lowered limit holds at once, a raised one
        # once the apiserver enforces it (before that it would refuse the pods).
        enforced = parse_quantity((quota.enforced or {}).get(resource))
        if enforced is not None:
            limit = min(limit, enforced)
        out.append(
            GpuQuota(
                namespace=quota.namespace,
                name=quota.name,
                hard=math.floor(limit),
                only=found[0],
                exclude=found[1],
                resource=resource,
            )
        )
    return out


#: set by a cluster admin on a Namespace (annotation, else label): the namespace's weight when
#: elastic surplus GPUs are shared between namespaces (default 1)
FAIR_SHARE_WEIGHT = "accordion.dev/fair-share-weight"
#: the largest weight accepted (a bound, so that a typo such as 1e300 is refused, not obeyed)
MAX_WEIGHT = 1000.0


def fair_share_weight(meta: Mapping[str, Any]) -> tuple[float, str | None]:
    """A Namespace's fair-share weight from its metadata: the annotation, else the label, else
    1; and why the value written was refused (then the weight is 1), or None."""
    for where in ("annotations", "labels"):
        raw = (meta.get(where) or {}).get(FAIR_SHARE_WEIGHT)
        if raw is None:
            continue
        try:
            weight = float(str(raw).strip())
        except ValueError:
            weight = math.nan
        if not (0 < weight <= MAX_WEIGHT):  # NaN and inf fail too
            return 1.0, (
                f"{where[:-1]} {FAIR_SHARE_WEIGHT}={str(raw)[:64]!r} is not a number in "
                f"(0, {MAX_WEIGHT:g}]; using 1"
            )
        return weight, None
    return 1.0, None


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
