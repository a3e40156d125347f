"""The operator's RBAC is exactly what its code uses: no rule unused, no call unpermitted.

The permissions the code needs are derived from the source of operator/accordion_operator/:
- every module: each `request(METHOD, version, url, ...)` with a literal version, each
  `patch(RESOURCE, ...)`, `patch_status(RESOURCE, ...)` and `delete(RESOURCE, ...)` of a
  `core.objects.Resource`, each `list_all(version, plural)`, each
  `@kopf.on.event(group, version, plural)` (kopf lists and watches) and each entry of a
  `WATCHES` table (the controllers' own watch streams, `core.cache.Watch`);
- core.objects.PLURALS: the kinds `Kube.create(obj)` can create (Events included);
- builders.build_role: what the operator grants each launcher, which RBAC lets only holders grant;
- kopf itself (FRAMEWORK below).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from chartkit import Obj, find, one, render

from accordion_operator.api.common import GROUP
from accordion_operator.api.trainingrun import KIND as RUN_KIND
from accordion_operator.core import objects
from accordion_operator.core.objects import Resource
from accordion_operator.trainingrun import builders

Perm = tuple[str, str, str]  # (apiGroup, resource, verb)

#: What kopf needs beyond the handlers' list/watch: scanning of CRDs (read-only).
FRAMEWORK: set[Perm] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
CLUSTER_SCOPED = {
    "validatingadmissionpolicies",
    "nodes",
    "customresourcedefinitions",
    "priorityclasses",
    "namespaces",
    "resourceflavors",
}
HTTP_VERB = {"GET": "get", "POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}
KIND_GROUP = {
    "Role": "rbac.authorization.k8s.io",
    "RoleBinding": "rbac.authorization.k8s.io",
    RUN_KIND: GROUP,  # the Experiment controller's trials
}


def _group(version: str) -> str:
    return version.rsplit("/", 1)[0] if "/" in version else ""


def _value(node: ast.expr, scope: dict[str, Any]) -> str:
    """A string argument: a literal, a module constant, or the resource part of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        value = scope[node.id]
        assert isinstance(value, str), node.id
        return value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name):
                # module constants resolve (PLURAL); local names (an object's name) become "*"
                parts.append(str(scope.get(v.value.id, "*")))
            else:
                parts.append("*")
        return "".join(parts)
    raise AssertionError(f"cannot read {ast.unparse(node)}: extend this test")


def _resource(url: str) -> str:
    """`pods/{name}` -> pods; `trainingruns/{name}/status` -> trainingruns/status."""
    parts = url.split("/")
    return parts[0] if len(parts) < 3 else f"{parts[0]}/{parts[2]}"


def _calls(tree: ast.AST, attr: str) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == attr
        ):
            yield node


def _modules() -> list[ModuleType]:
    import accordion_operator

    names = [
        m.name for m in pkgutil.walk_packages(accordion_operator.__path__, "accordion_operator.")
    ]
    return [importlib.import_module(n) for n in names if not n.endswith("__main__")]


#: Kube's methods that take a Resource first: method -> (verb, subresource)
RESOURCE_CALLS = {
    "patch": ("patch", ""),
    "patch_status": ("patch", "/status"),
    "delete": ("delete", ""),
}


def _literal_version(node: ast.expr, scope: dict[str, Any]) -> bool:
    """A version the call site names (the generic helpers pass a variable through)."""
    if isinstance(node, ast.Constant):
        return True
    return isinstance(node, ast.Name) and isinstance(scope.get(node.id), str)


def permissions_from_api_calls() -> set[Perm]:
    """Every `request(METHOD, version, url)`, every call with a Resource, and every
    `list_all(version, plural)` in any module."""
    perms: set[Perm] = set()
    for module in _modules():
        scope = vars(module)
        tree = ast.parse(inspect.getsource(module))
        for call in _calls(tree, "request"):
            if len(call.args) < 3:
                continue  # aiohttp's session.request(method, url): the transport below Kube
            method, version, url = call.args[:3]
            if not _literal_version(version, scope):
                continue
            perms.add(
                (
                    _group(_value(version, scope)),
                    _resource(_value(url, scope)),
                    HTTP_VERB[_value(method, scope)],
                )
            )
        for name, (verb, sub) in RESOURCE_CALLS.items():
            for call in _calls(tree, name):
                first = call.args[0] if call.args else None
                res = scope.get(first.id) if isinstance(first, ast.Name) else None
                if isinstance(res, Resource):
                    perms.add((_group(res.api_version), res.plural + sub, verb))
        for call in _calls(tree, "list_all"):
            version, plural = call.args[:2]
            perms.add((_group(_value(version, scope)), _value(plural, scope), "list"))
    return perms


def permissions_from_create() -> set[Perm]:
    """`Kube.create(obj)`: every kind it can create (core.objects.PLURALS)."""
    return {
        (KIND_GROUP.get(kind, ""), plural, "create") for kind, plural in objects.PLURALS.items()
    }


def permissions_from_handlers() -> set[Perm]:
    """What is watched: each `@kopf.on.event` (kopf lists and watches) and each entry of a
    module's `WATCHES` table (`core.cache.Watch` entries: the controllers' own
    LIST + WATCH streams)."""
    perms: set[Perm] = set()
    for module in _modules():
        for w in getattr(module, "WATCHES", ()):
            group = _group(w.api_version)
            perms |= {(group, w.plural, "list"), (group, w.plural, "watch")}
        scope = vars(module)
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for deco in node.decorator_list:
                if not isinstance(deco, ast.Call):
                    continue
                name = ast.unparse(deco.func)
                if name == "kopf.on.event":
                    group, _version, plural = (_value(a, scope) for a in deco.args[:3])
                    perms |= {(group, plural, "list"), (group, plural, "watch")}
                elif name.startswith("kopf.on."):
                    assert name in (
                        "kopf.on.startup",
                        "kopf.on.cleanup",
                        "kopf.on.login",
                        "kopf.on.probe",  # a value in /healthz; no API call
                    ), (
                        f"{name}: a change handler makes kopf patch finalizers/annotations: "
                        "add those verbs here and in the chart"
                    )
    return perms


def permissions_granted_to_launchers() -> set[Perm]:
    from accordion_operator.config import Config

    role = builders.build_role("ns", Config())
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


#: The operator's Lease (core/election.py): granted by a Role in the release namespace, not by
#: the (Cluster)Roles of the watched namespaces.
LEASE_GROUP = "coordination.k8s.io"


def needed() -> frozenset[Perm]:
    """What the (Cluster)Roles of the watched namespaces must grant."""
    return frozenset(p for p in needed_with_lease() if p[0] != LEASE_GROUP)


@functools.cache  # the derivation walks every module's AST: seconds, once
def needed_with_lease() -> frozenset[Perm]:
    return frozenset(
        permissions_from_api_calls()
        | permissions_from_create()
        | permissions_from_handlers()
        | permissions_granted_to_launchers()
        | FRAMEWORK
    )


def _expand(rules: list[dict[str, Any]]) -> set[Perm]:
    out: set[Perm] = set()
    for rule in rules:
        # by name only where the chart knows the one object: its own launcher admission policy
        names = rule.get("resourceNames")
        assert names is None or (
            rule["resources"] == ["validatingadmissionpolicies"]
            and names == ["acc-accordion-launcher-own-run"]
        ), rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    assert "*" not in (g, r, v), rule
                    out.add((g, r, v))
    return out


def test_the_code_derivation_finds_the_known_calls() -> None:
    """Guards the parser itself: a few calls we know the operator makes."""
    perms = needed()
    assert ("", "pods", "create") in perms
    assert ("", "secrets", "get") in perms
    assert ("accordion.dev", "trainingruns/status", "patch") in perms
    assert ("accordion.dev", "trainingruns", "watch") in perms
    assert ("", "nodes", "watch") in perms
    assert ("accordion.dev", "experiments", "watch") in perms
    assert ("", "nodes", "list") in perms
    assert ("rbac.authorization.k8s.io", "rolebindings", "create") in perms


def test_the_lease_role_is_what_leader_election_uses_in_the_release_namespace_only(
    defaults: list[Obj],
) -> None:
    """get/update on the one Lease by name, create (which RBAC cannot limit by name), nothing
    else, in the release namespace; no Lease rule in any ClusterRole or watched-namespace Role."""
    lease = {p for p in needed_with_lease() if p[0] == LEASE_GROUP}
    assert lease == {(LEASE_GROUP, "leases", v) for v in ("get", "update", "create")}
    role = one(defaults, "Role", "acc-accordion-operator-lease")
    assert role["metadata"]["namespace"] == "accordion-system"
    granted: set[Perm] = set()
    for rule in role["rules"]:
        perms = {
            (g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
        }
        if "create" in rule["verbs"]:
            assert "resourceNames" not in rule
        else:
            assert rule["resourceNames"] == ["acc-accordion-operator"]  # the chart's lease name
        granted |= perms
    assert granted == lease
    binding = one(defaults, "RoleBinding", "acc-accordion-operator-lease")
    assert binding["subjects"][0]["name"] == "acc-accordion-operator"
    settings = one(defaults, "ConfigMap", "acc-accordion-operator-settings")["data"]
    assert settings["ACCORDION_LEADER_LEASE_NAME"] == "acc-accordion-operator"
    assert settings["ACCORDION_LEADER_LEASE_NAMESPACE"] == "accordion-system"
    cluster = _expand(one(defaults, "ClusterRole", "acc-accordion-operator")["rules"])
    assert not [p for p in cluster if p[0] == LEASE_GROUP]
    objs = render({"operator.leaderElection.enabled": "false", "operator.replicas": "1"})
    assert find(objs, "Role", "acc-accordion-operator-lease") == []


def test_cluster_wide_rules_equal_what_the_code_uses(defaults: list[Obj]) -> None:
    role = one(defaults, "ClusterRole", "acc-accordion-operator")
    granted = _expand(role["rules"])
    missing = needed() - granted
    unused = granted - needed()
    assert missing == set(), f"the operator makes calls its ClusterRole does not allow: {missing}"
    assert unused == set(), f"rules no code uses (least privilege): {unused}"
    binding = one(defaults, "ClusterRoleBinding", "acc-accordion-operator")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "acc-accordion-operator",
            "namespace": "accordion-system",
        }
    ]


def test_priority_classes_and_quotas_are_read_only(defaults: list[Obj]) -> None:
    """A run's priority comes from PriorityClasses and the namespace's ResourceQuotas (issue 16):
    the operator reads both through its watch cache, and may never write either."""
    assert {("scheduling.k8s.io", "priorityclasses", v) for v in ("list", "watch")} <= needed()
    assert {("", "resourcequotas", v) for v in ("list", "watch")} <= needed()
    granted = _expand(one(defaults, "ClusterRole", "acc-accordion-operator")["rules"])
    for resource in ("priorityclasses", "resourcequotas"):
        verbs = {v for _, r, v in granted if r == resource}
        assert {"list", "watch"} <= verbs <= {"get", "list", "watch"}, (resource, verbs)
    assert {r for g, r, _ in granted if g == "scheduling.k8s.io"} == {"priorityclasses"}
    # namespaced mode: the quotas in each watched namespace's Role, the classes cluster-wide
    objs = render({"watch.namespaces": '["team-a"]'})
    role = _expand(one(objs, "Role", "acc-accordion-operator")["rules"])
    assert {r for _, r, _ in role} >= {"resourcequotas"}
    cluster = _expand(one(objs, "ClusterRole", "acc-accordion-operator")["rules"])
    assert {r for _, r, _ in cluster} >= {"priorityclasses"}


def test_namespaced_mode_uses_roles_plus_a_cluster_role_for_nodes() -> None:
    objs = render({"watch.namespaces": '["team-a","team-b"]'})
    cluster = _expand(one(objs, "ClusterRole", "acc-accordion-operator")["rules"])
    assert {r for _, r, _ in cluster} == CLUSTER_SCOPED
    roles = find(objs, "Role", "acc-accordion-operator")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = find(objs, "RoleBinding", "acc-accordion-operator")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert cluster | _expand(role["rules"]) == needed()
        assert {r for _, r, _ in _expand(role["rules"])}.isdisjoint(CLUSTER_SCOPED)


def test_every_rule_is_labelled_framework_or_application() -> None:
    from chartkit import render_text

    text = render_text({"watch.namespaces": '["a"]'}, "--skip-tests")
    for doc in text.split("\n---"):
        if "name: acc-accordion-operator\n" not in doc or "\nrules:" not in doc:
            continue
        head, previous_was_comment, rules = "", False, 0
        for line in doc.split("\nrules:", 1)[1].splitlines():
            stripped = line.strip()
            is_comment = stripped.startswith("#")
            if is_comment and not previous_was_comment:
                head = stripped  # first line of the comment block the next rules belong to
            previous_was_comment = is_comment
            if stripped.startswith("- apiGroups:"):
                rules += 1
                assert head.startswith(("# Framework:", "# Application:")), (line, head)
        assert rules >= 2


def test_kueue_workloads_are_created_and_deleted_never_their_status(defaults: list[Obj]) -> None:
    """Kueue admits; the operator makes and removes its runs' Workloads and reads Kueue's
    answer and the ResourceFlavors, and may not write a Workload's status (issue 19)."""
    granted = _expand(one(defaults, "ClusterRole", "acc-accordion-operator")["rules"])
    kueue = {(r, v) for g, r, v in granted if g == "kueue.x-k8s.io"}
    assert kueue == {
        ("workloads", "list"),
        ("workloads", "watch"),
        ("workloads", "create"),
        ("workloads", "delete"),
        ("resourceflavors", "list"),
        ("resourceflavors", "watch"),
    }


def test_users_get_runs_through_the_default_roles(defaults: list[Obj]) -> None:
    view = one(defaults, "ClusterRole", "acc-accordion-view")
    edit = one(defaults, "ClusterRole", "acc-accordion-edit")
    for label in ("view", "edit", "admin"):
        assert (
            view["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{label}"] == "true"
        )
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    read = _expand(view["rules"])
    assert {(g, r) for g, r, _ in read} >= {
        ("accordion.dev", "trainingruns"),
        ("accordion.dev", "experiments"),
    }
    assert {v for _, _, v in read} == {"get", "list", "watch"}
    write = _expand(edit["rules"])
    assert ("accordion.dev", "trainingruns", "create") in write
    assert ("accordion.dev", "experiments", "delete") in write
    assert ("accordion.dev", "trainingruns/scale", "patch") in write
    # users never write status: that is the operator's and the launcher's
    assert not [p for p in write if p[1].endswith("/status")]


@pytest.mark.parametrize("value", ["rbac.create", "rbac.aggregateToDefaultRoles"])
def test_rbac_toggles(value: str) -> None:
    objs = render({value: "false"})
    names = {o["metadata"]["name"] for o in objs if o["kind"] == "ClusterRole"}
    if value == "rbac.create":
        assert names == {"acc-accordion-view", "acc-accordion-edit"}
        assert find(objs, "ClusterRoleBinding") == []
    else:
        assert names == {"acc-accordion-operator"}


def test_the_launcher_admission_policy_is_the_operators(defaults: list[Obj]) -> None:
    """The launchers of a namespace share one Role that lets them patch runs' status; the chart's
    admission policy is what keeps each to its own run (builders.build_launcher_policy)."""
    policy = one(defaults, "ValidatingAdmissionPolicy", "acc-accordion-launcher-own-run")
    assert policy["spec"] == builders.build_launcher_policy()[0]["spec"]
    binding = one(defaults, "ValidatingAdmissionPolicyBinding", "acc-accordion-launcher-own-run")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    no_rbac = render({"rbac.create": "false"})
    assert find(no_rbac, "ValidatingAdmissionPolicy") == []
