"""A run's SSH Secret, ServiceAccount, Role and RoleBinding: the RoleBinding is created only once
its Role exists. Under the chart's least-privilege RBAC (no `bind` verb) the apiserver checks
that the operator holds every permission of the referenced Role and answers 404 while that Role
does not exist yet; a kubeconfig admin skips the check, so only the operator running from the
chart met it (tests/e2e/test_helm_install.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from trainingrun_factory import make_run

from accordion_operator.config import Config
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller


class EscalationCheckingKube:
    """Creates objects like the apiserver does for a subject without `bind`."""

    def __init__(self, role_status: int = 201) -> None:
        self.role_status = role_status
        self.existing: set[tuple[str, str]] = set()
        self.created: list[str] = []

    async def create(self, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "RoleBinding" and ("Role", obj["roleRef"]["name"]) not in self.existing:
            return 404, {"message": f'roles.rbac.authorization.k8s.io "{name}" not found'}
        await asyncio.sleep(0)  # in flight: concurrent creations interleave
        if kind == "Role" and self.role_status >= 400:
            return self.role_status, {"message": "denied"}
        self.existing.add((kind, name))
        self.created.append(kind)
        return 201, obj


async def test_the_role_binding_waits_for_its_role() -> None:
    kube = EscalationCheckingKube()
    ctl = Controller(Config(), kube, ClusterCache(Config()))  # type: ignore[arg-type]
    run = make_run()
    await ctl._ensure_auth(run)
    assert sorted(kube.created[:3]) == ["Role", "Secret", "ServiceAccount"]
    assert kube.created[3:] == ["RoleBinding"]
    assert run.metadata.uid in ctl.auth_done


async def test_no_role_binding_when_the_role_failed() -> None:
    kube = EscalationCheckingKube(role_status=403)
    ctl = Controller(Config(), kube, ClusterCache(Config()))  # type: ignore[arg-type]
    run = make_run()
    with pytest.raises(RuntimeError, match="Role"):
        await ctl._ensure_auth(run)
    assert "RoleBinding" not in kube.created
    assert run.metadata.uid not in ctl.auth_done
