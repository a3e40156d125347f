"""Kubernetes object plumbing both kinds share: keys, resource versions, owner references, the
resources the operator writes, and the labels every Accordion object carries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from accordion_operator.api import experiment, trainingrun
from accordion_operator.api.common import API_VERSION

LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: on a TrainingRun (and its pods): the Experiment it is a trial of
LABEL_EXPERIMENT = "accordion.dev/experiment"
MANAGED_BY = "accordion-operator"


@dataclass(frozen=True)
class Resource:
    """A REST resource: what a request path needs."""

    api_version: str
    kind: str
    plural: str


TRAININGRUNS = Resource(API_VERSION, trainingrun.KIND, trainingrun.PLURAL)
EXPERIMENTS = Resource(API_VERSION, experiment.KIND, experiment.PLURAL)
SERVICEACCOUNTS = Resource("v1", "ServiceAccount", "serviceaccounts")
ROLES = Resource("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")
EVENTS = Resource("v1", "Event", "events")
#: kind -> plural of every kind the operator creates (`Kube.create`; the chart's RBAC follows it)
PLURALS = {
    "Pod": "pods",
    "Secret": "secrets",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Event": "events",
    TRAININGRUNS.kind: TRAININGRUNS.plural,
}


def plural_of(kind: str) -> str:
    """The plural of a kind the operator creates (KeyError for any other: a bug)."""
    return PLURALS[kind]


def resource_version(body: Mapping[str, Any]) -> int:
    """metadata.resourceVersion as a number, to order two copies of one object (0: unknown)."""
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def object_key(body: Mapping[str, Any]) -> tuple[str, str]:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def object_ref(resource: Resource, namespace: str, name: str, uid: str) -> dict[str, str]:
    """An Event's involvedObject."""
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "name": name,
        "namespace": namespace,
        "uid": uid,
    }


def owner_reference(resource: Resource, name: str, uid: str) -> dict[str, Any]:
    """The controller ownerReference a child carries: garbage collection deletes it with its
    owner, and the owner's controller counts only children whose reference has its uid."""
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
