"""The launchers' identity: one ServiceAccount, Role and RoleBinding `accordion-launcher` in each
namespace that has runs, removed once the namespace has had no run for
`ACCORDION_LAUNCHER_IDENTITY_IDLE_SECONDS`.

Per namespace rather than per run: three apiserver writes per namespace instead of three per
run, which bound how fast a burst of runs gets its pods (issue #21). Each launcher still writes
only its own run's status: the admission policy of `builders.build_launcher_policy` checks the
pod its token is bound to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Set

from accordion_operator.config import Config
from accordion_operator.core.kube import ApiError, Kube
from accordion_operator.core.objects import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
)
from accordion_operator.trainingrun import builders

log = logging.getLogger(__name__)

SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{builders.LABEL_ROLE}={builders.ROLE_LAUNCHER}"


def idle_namespaces(
    present: Iterable[str],
    with_runs: Set[str],
    idle_since: Mapping[str, float],
    now: float,
    idle_after: float,
) -> tuple[list[str], dict[str, float]]:
    """Which namespaces' identities to remove now (no run there for `idle_after` seconds), and
    when each other namespace without runs became so (a namespace with runs restarts its clock)."""
    remove: list[str] = []
    clocks: dict[str, float] = {}
    for ns in sorted(present):
        if ns in with_runs:
            continue
        since = idle_since.get(ns, now)
        if now - since >= idle_after:
            remove.append(ns)
        else:
            clocks[ns] = since
    return remove, clocks


class LauncherIdentities:
    """Creates a namespace's launcher identity before its first launcher, once per namespace and
    process (a 409 on an existing object is success), and removes idle ones."""

    def __init__(self, kube: Kube, cfg: Config) -> None:
        self.kube, self.cfg = kube, cfg
        self.idle_after = cfg.launcher_identity_idle_seconds
        #: created (or found existing) by this process
        self.ensured: set[str] = set()
        #: may hold an identity: ensured, or listed at start (left by an earlier process)
        self.present: set[str] = set()
        self.idle_since: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[None]] = {}
        #: the launcher admission policy, owner of the identities (None: not found)
        self.owner: builders.Owner = None

    async def discover(self) -> None:
        """The launcher admission policy (the identities' owner), and the namespaces an earlier
        operator process left an identity in, so that it is removed when idle even if their last
        run went while no operator ran."""
        await self._find_policy()
        try:
            found = await self.kube.list_all("v1", "serviceaccounts", self.cfg.namespaces, SELECTOR)
        except ApiError as exc:
            log.warning("listing launcher ServiceAccounts: %s; only new ones are cleaned up", exc)
            return
        self.present |= {str(sa["metadata"]["namespace"]) for sa in found}

    async def _find_policy(self) -> None:
        name = self.cfg.launcher_policy
        if not name:
            log.warning(
                "no launcher admission policy configured (ACCORDION_LAUNCHER_POLICY): a launcher "
                "can write the status of any run in its namespace"
            )
            return
        code, data = await self.kube.request(
            "GET", "admissionregistration.k8s.io/v1", f"validatingadmissionpolicies/{name}"
        )
        if code == 200:
            self.owner = builders.policy_owner(data)
        elif code == 404:
            log.error(
                "the launcher admission policy %s is missing: a launcher can write the status "
                "of any run in its namespace. Install it (the chart does; or kubectl apply -f "
                "helm/accordion/files/launcher-policy.json) and restart the operator",
                name,
            )
        else:
            log.warning("reading the launcher admission policy %s: %s %s", name, code, data)

    async def ensure(self, namespace: str) -> None:
        """The identity exists in `namespace` when this returns; RuntimeError when the apiserver
        refused it. Concurrent callers for one namespace share one set of writes."""
        if namespace in self.ensured:
            return
        pending = self._inflight.get(namespace)
        if pending is None:
            pending = asyncio.ensure_future(self._create(namespace))
            self._inflight[namespace] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(namespace, None))
        await asyncio.shield(pending)

    async def _create(self, namespace: str) -> None:
        cfg = self.cfg
        owner = self.owner
        objs = [
            builders.build_service_account(namespace, cfg, owner),
            builders.build_role(namespace, cfg, owner),
        ]
        self.present.add(namespace)
        codes = list(await asyncio.gather(*(self.kube.create(o) for o in objs)))
        # The RoleBinding only once its Role exists: without `bind`, the apiserver checks that
        # the operator holds every permission of the referenced Role, and answers 404 while the
        # Role is not there yet (a superuser, e.g. a kubeconfig admin, skips that check).
        if codes[-1][0] in (200, 201, 409):
            binding = builders.build_role_binding(namespace, cfg, owner)
            objs.append(binding)
            codes.append(await self.kube.create(binding))
        bad = [
            (o["kind"], c, d.get("message"))
            for o, (c, d) in zip(objs, codes, strict=True)
            if c not in (200, 201, 409)
        ]
        if bad:
            raise RuntimeError(f"creating the launcher identity in {namespace}: {bad}")
        self.ensured.add(namespace)

    async def collect(self, with_runs: Set[str], now: float) -> float | None:
        """Removes the identities of namespaces idle for `idle_after`; the seconds until the next
        one is due (None: none is waiting)."""
        remove, self.idle_since = idle_namespaces(
            self.present, with_runs, self.idle_since, now, self.idle_after
        )
        for ns in remove:
            await self._remove(ns)
        if not self.idle_since:
            return None
        return max(0.0, min(self.idle_since.values()) + self.idle_after - now)

    async def _remove(self, namespace: str) -> None:
        self.ensured.discard(namespace)
        name = builders.LAUNCHER_IDENTITY
        # binding first: a half-removed identity never grants a Role to a new holder
        answers = [
            ("RoleBinding", await self.kube.delete(ROLEBINDINGS, namespace, name)),
            ("Role", await self.kube.delete(ROLES, namespace, name)),
            ("ServiceAccount", await self.kube.delete(SERVICEACCOUNTS, namespace, name)),
        ]
        bad = [(kind, c, d.get("message")) for kind, (c, d) in answers if c not in (200, 202, 404)]
        if bad:  # kept in `present`: tried again once idle again
            log.warning("%s: removing the idle launcher identity: %s", namespace, bad)
            return
        self.present.discard(namespace)
        log.info("%s: no run for %.0f s; removed the launcher identity", namespace, self.idle_after)
