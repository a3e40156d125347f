"""A run's SSH Secret and its namespace's launcher identity (ServiceAccount, Role, RoleBinding,
one each per namespace, removed once idle). The RoleBinding is created only once its Role
exists: under the chart's least-privilege RBAC (no `bind` verb) the apiserver checks that the
operator holds every permission of the referenced Role and answers 404 while that Role does not
exist yet; a kubeconfig admin skips the check, so only the operator running from the chart met it
(tests/e2e/test_helm_install.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from trainingrun_factory import make_run

from accordion_operator.config import Config
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller
from accordion_operator.trainingrun.identity import LauncherIdentities, idle_namespaces


class EscalationCheckingKube:
    """Creates objects like the apiserver does for a subject without `bind`."""

    def __init__(self, role_status: int = 201) -> None:
        self.role_status = role_status
        self.existing: set[tuple[str, str]] = set()
        self.created: list[str] = []
        self.objects: list[dict[str, Any]] = []

    async def create(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "RoleBinding" and ("Role", obj["roleRef"]["name"]) not in self.existing:
            return 404, {"message": f'roles.rbac.authorization.k8s.io "{name}" not found'}
        await asyncio.sleep(0)  # in flight: concurrent creations interleave
        if kind == "Role" and self.role_status >= 400:
            return self.role_status, {"message": "denied"}
        self.existing.add((kind, name))
        self.created.append(kind)
        self.objects.append(obj)
        return 201, obj


async def test_the_role_binding_waits_for_its_role() -> None:
    kube = EscalationCheckingKube()
    ctl = Controller(Config(), kube, ClusterCache(Config()))  # type: ignore[arg-type]
    run = make_run()
    await ctl._ensure_auth(run, ssh=True)
    assert sorted(kube.created[:3]) == ["Role", "Secret", "ServiceAccount"]
    assert kube.created[3:] == ["RoleBinding"]
    assert run.metadata.uid in ctl.auth_done


async def test_no_role_binding_when_the_role_failed() -> None:
    kube = EscalationCheckingKube(role_status=403)
    ctl = Controller(Config(), kube, ClusterCache(Config()))  # type: ignore[arg-type]
    run = make_run()
    with pytest.raises(RuntimeError, match="Role"):
        await ctl._ensure_auth(run, ssh=True)
    assert "RoleBinding" not in kube.created
    assert run.metadata.uid not in ctl.auth_done


async def test_one_identity_per_namespace_for_all_its_runs() -> None:
    kube = EscalationCheckingKube()
    ctl = Controller(Config(), kube, ClusterCache(Config()))  # type: ignore[arg-type]
    runs = [make_run(metadata={"name": f"r{i}", "uid": f"u{i}"}) for i in range(5)]
    await asyncio.gather(*(ctl._ensure_auth(r, ssh=True) for r in runs))  # one batch, concurrently
    assert sorted(kube.created) == ["Role", "RoleBinding"] + ["Secret"] * 5 + ["ServiceAccount"]
    assert ctl.auth_done == {f"u{i}" for i in range(5)}
    await ctl._ensure_auth(make_run(metadata={"name": "r9", "uid": "u9"}), ssh=True)
    assert kube.created.count("ServiceAccount") == 1  # known: no more writes for it


def test_a_namespace_without_runs_keeps_its_identity_for_a_while() -> None:
    present = ["a", "b", "c"]
    remove, clocks = idle_namespaces(present, {"a"}, {"c": 100.0}, now=650.0, idle_after=600.0)
    assert remove == []
    assert clocks == {"b": 650.0, "c": 100.0}  # b's clock starts now; a has runs
    remove, clocks = idle_namespaces(present, {"a"}, clocks, now=700.0, idle_after=600.0)
    assert remove == ["c"]
    assert clocks == {"b": 650.0}
    remove, clocks = idle_namespaces(["a", "b"], {"a", "b"}, clocks, now=2000.0, idle_after=600.0)
    assert (remove, clocks) == ([], {})  # a run came back to b: its clock is gone


class DeletingKube(EscalationCheckingKube):
    def __init__(self, delete_status: int = 200) -> None:
        super().__init__()
        self.delete_status = delete_status
        self.deleted: list[tuple[str, str]] = []

    async def delete(self, resource: Any, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        self.deleted.append((resource.kind, namespace))
        return self.delete_status, {"message": "nope"}

    async def request(self, method: str, version: str, url: str) -> tuple[int, dict[str, Any]]:
        assert (method, version) == ("GET", "admissionregistration.k8s.io/v1")
        if url != "validatingadmissionpolicies/accordion-launcher-own-run":
            return 404, {}
        return 200, {"metadata": {"name": "accordion-launcher-own-run", "uid": "p-uid"}}

    async def list_all(
        self, version: str, plural: str, namespaces: tuple[str, ...] = (), selector: str = ""
    ) -> list[dict[str, Any]]:
        assert (version, plural) == ("v1", "serviceaccounts")
        assert "accordion.dev/role=launcher" in selector
        return [{"metadata": {"namespace": "left-behind", "name": "accordion-launcher"}}]


async def test_idle_identities_are_removed_binding_first_and_recreated_on_demand() -> None:
    kube = DeletingKube()
    ids = LauncherIdentities(kube, Config(launcher_identity_idle_seconds=60.0))  # type: ignore[arg-type]
    await ids.discover()  # the policy, and an identity left by an earlier operator process
    await ids.ensure("team-a")
    assert {o["metadata"]["ownerReferences"][0]["uid"] for o in kube.objects} == {"p-uid"}
    assert await ids.collect({"team-a"}, now=0.0) == 60.0  # left-behind is idle from now
    assert await ids.collect(set(), now=30.0) == 30.0  # team-a's clock starts at 30
    assert kube.deleted == []
    assert await ids.collect(set(), now=60.0) == 30.0
    assert kube.deleted == [
        ("RoleBinding", "left-behind"),
        ("Role", "left-behind"),
        ("ServiceAccount", "left-behind"),
    ]
    assert await ids.collect(set(), now=90.0) is None
    assert ids.present == set()
    await ids.ensure("team-a")  # a new run: created again
    assert kube.created.count("ServiceAccount") == 2


async def test_a_refused_removal_is_tried_again() -> None:
    kube = DeletingKube(delete_status=403)
    ids = LauncherIdentities(kube, Config(launcher_identity_idle_seconds=0.0))  # type: ignore[arg-type]
    await ids.ensure("team-a")
    await ids.collect(set(), now=0.0)
    assert ids.present == {"team-a"}
    assert "team-a" not in ids.ensured  # re-created (409s) before the next launcher
    await ids.collect(set(), now=1.0)
    assert len(kube.deleted) == 6


async def test_without_the_policy_the_identity_has_no_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube = DeletingKube()
    cfg = Config(launcher_policy="someone-elses")
    ids = LauncherIdentities(kube, cfg)  # type: ignore[arg-type]
    await ids.discover()
    assert "launcher admission policy someone-elses is missing" in caplog.text
    await ids.ensure("team-a")
    assert all("ownerReferences" not in o["metadata"] for o in kube.objects)


async def test_a_launcher_alone_in_its_run_needs_the_identity_only() -> None:
    kube = EscalationCheckingKube()
    ctl = Controller(Config(), kube, ClusterCache(Config()))  # type: ignore[arg-type]
    run = make_run()
    await ctl._ensure_auth(run, ssh=False)
    assert sorted(kube.created) == ["Role", "RoleBinding", "ServiceAccount"]
    # not done: a pod that mounts the Secret (max raised later) still gets it created
    assert run.metadata.uid not in ctl.auth_done
    await ctl._ensure_auth(run, ssh=True)
    assert kube.created.count("Secret") == 1
    assert run.metadata.uid in ctl.auth_done
