"""kopf handlers: thin. One startup starts both controllers (TrainingRun and Experiment) on one
apiserver client and one metrics registry; one cleanup stops them.

With leader election (ACCORDION_LEADER_ELECTION, the default) startup starts a `Supervisor`
instead, which starts the controllers only while this replica holds the operator's Lease
(core/election.py): each term of leadership gets a fresh client, fresh caches filled by a fresh
LIST and fresh controllers (`Running`), so a new leader acts on the cluster as it is, never on
what it remembered from an earlier term; at the end of a term the controllers are cancelled, not
drained (the renew deadline is near), and the fence (`Kube.may_write`) already refuses their
writes. kopf itself only runs startup, cleanup, login and the probe here: no kopf handler
writes to the cluster, so none needs gating.

The controllers keep their own caches through plain watches (`core.cache`, `Kube.list_watch`:
why not kopf's per-object handlers is said there); kopf contributes the process (signals, the
liveness endpoint, login). No handler writes status through its return value (kopf would
put it under `status.<handler>`), and none needs a finalizer: children are deleted by the
garbage collector through their ownerReferences.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from accordion_operator.config import Config
from accordion_operator.core.cache import stream_count
from accordion_operator.core.election import LeaderElector
from accordion_operator.core.kube import Kube
from accordion_operator.core.leader import Timing, identity
from accordion_operator.experiment.cache import WATCHES as EXPERIMENT_WATCHES
from accordion_operator.experiment.cache import ExperimentCache
from accordion_operator.experiment.controller import ExperimentController
from accordion_operator.metrics import OperatorMetrics, start_metrics_server
from accordion_operator.trainingrun.cache import WATCHES as RUN_WATCHES
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.controller import Controller
from accordion_operator.trainingrun.storage import StoragePreflight

log = logging.getLogger("accordion.handlers")


def configure(settings: kopf.OperatorSettings) -> None:
    """The one kopf setting that acts on what kopf still does here (startup and cleanup)."""
    # Our Events are explicit; do not turn every log line of a handler into a Kubernetes Event.
    settings.posting.enabled = False


_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@kopf.on.login()
def login(logger: kopf.Logger, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, reach the apiserver at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, as
    client-go's in-cluster config does (kopf's own in-cluster login hard-codes the DNS name
    `kubernetes.default.svc`, which clusters without cluster DNS cannot resolve); otherwise
    fall back to kopf's kubeconfig login."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token_file = _SA_DIR / "token"
    if host and token_file.exists():
        ca = _SA_DIR / "ca.crt"
        namespace = _SA_DIR / "namespace"
        return kopf.ConnectionInfo(
            server=f"https://{host}:{port}",
            ca_path=str(ca) if ca.exists() else None,
            token=token_file.read_text().strip(),
            default_namespace=namespace.read_text().strip() if namespace.exists() else None,
        )
    return kopf.login_with_kubeconfig(logger=logger, **kwargs)


@dataclass
class Running:
    """What startup started and cleanup stops."""

    kube: Kube
    stop: asyncio.Event
    #: each controller's loop, with the event that wakes it from its idle wait
    loops: list[tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=list)
    storage: StoragePreflight | None = None

    async def shutdown(self) -> None:
        self.stop.set()
        for _, wake in self.loops:
            wake.set()  # wake the idle loops now, not at their next resync
        for task, _ in self.loops:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        if self.storage is not None:
            await self.storage.close()
        await self.kube.close()

    async def abort(self) -> None:
        """End a term at once: its renew deadline is near, so the loops are cancelled rather
        than allowed to finish their pass (the fence already refuses their writes)."""
        self.stop.set()
        for task, _ in self.loops:
            task.cancel()
        await asyncio.gather(*(t for t, _ in self.loops), return_exceptions=True)
        if self.storage is not None:
            await self.storage.close()
        await self.kube.close()


async def start_controllers(
    cfg: Config, metrics: OperatorMetrics, fence: Callable[[], bool] | None = None
) -> Running:
    """A client, caches and both controllers, from nothing: their caches fill from a fresh
    LIST before the first pass acts (`core.cache.expected_syncs`). `fence`: `Kube.may_write`."""
    streams = stream_count(cfg, [*RUN_WATCHES, *EXPERIMENT_WATCHES])
    kube = await Kube.connect(cfg, metrics, streams=streams)
    kube.may_write = fence
    cache = ClusterCache(cfg)
    storage = (
        StoragePreflight(kube, cache.dirty.set, retry_first_s=cfg.storage_retry_seconds)
        if cfg.storage_preflight
        else None
    )
    runs = Controller(cfg, kube, cache, metrics=metrics, storage=storage)
    experiments = ExperimentController(cfg, kube, ExperimentCache(), metrics=metrics)
    running = Running(kube, asyncio.Event(), storage=storage)
    for name, ctl in (("trainingruns", runs), ("experiments", experiments)):
        task = asyncio.create_task(ctl.run_forever(running.stop), name=f"accordion-{name}")
        running.loops.append((task, ctl.cache.dirty))
    return running


def lease_namespace(cfg: Config) -> str:
    """ACCORDION_LEADER_LEASE_NAMESPACE, else the pod's own namespace, else "default"."""
    if cfg.leader_lease_namespace:
        return cfg.leader_lease_namespace
    own = _SA_DIR / "namespace"
    return own.read_text().strip() if own.exists() else "default"


@dataclass
class Supervisor:
    """Leader election around the controllers: standby until this replica holds the Lease, the
    controllers while it does, standby again when it loses it; until cleanup."""

    cfg: Config
    metrics: OperatorMetrics
    elector: LeaderElector
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    running: Running | None = None
    task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while not self.stop.is_set():
            try:
                await self._term()
            except Exception:
                # never leave a replica that neither leads nor stands by: a term that could not
                # start (e.g. no credentials) lapses with its deadline; try again after a pause
                log.exception("leader election: term failed; standing by")
                self.metrics.leader.set(0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), self.elector.timing.lease_duration)

    async def _term(self) -> None:
        """Stand by until this replica leads, then run the controllers until it no longer does."""
        if not await self.elector.acquire(self.stop):
            return
        log.info("leading (term %d): listing the cluster, then reconciling", self.elector.terms)
        # the fence first: nothing of this term can write once the Lease lapses
        running = await start_controllers(self.cfg, self.metrics, fence=self.elector.leading)
        self.running = running
        self.metrics.leader.set(1)
        try:
            await self.elector.hold(self.stop)
        finally:
            self.metrics.leader.set(0)
            self.metrics.forget_state()
            self.running = None
            if self.stop.is_set():
                await running.shutdown()  # cleanup: let a pass finish, then release
                await self.elector.release()
            else:
                await running.abort()
                log.warning("standby again: the controllers stopped")

    async def shutdown(self) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.elector.kube.close()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = Config.from_env()
    configure(settings)
    logging.getLogger("accordion").setLevel(cfg.log_level)
    metrics = OperatorMetrics()
    metrics.declare_handlers(["trainingruns", "experiments"])
    # the metrics server runs on standbys too: accordion_operator_leader says which is which
    server = (
        start_metrics_server(cfg.operator_metrics_port, metrics, addr=cfg.listen_address())[0]
        if cfg.operator_metrics_port
        else None
    )
    memo.metrics_server = server
    if not cfg.leader_election:
        memo.running = await start_controllers(cfg, metrics)
        metrics.leader.set(1)
        log.info("accordion operator started (namespaces: %s)", ",".join(cfg.namespaces) or "all")
        return
    timing = Timing(
        cfg.leader_lease_seconds, cfg.leader_renew_deadline_seconds, cfg.leader_retry_seconds
    )
    if problems := timing.problems():
        raise kopf.PermanentError(f"leader election settings: {'; '.join(problems)}")
    # the Lease has its own connection pool: renewals never queue behind the controllers' writes
    lease_kube = await Kube.connect(dataclasses.replace(cfg, max_concurrent_requests=2))
    me = identity(os.environ.get("POD_NAME") or socket.gethostname())
    namespace = lease_namespace(cfg)
    elector = LeaderElector(
        lease_kube, namespace, cfg.leader_lease_name, me, timing, create=cfg.leader_lease_create
    )
    supervisor = Supervisor(cfg, metrics, elector)
    supervisor.task = asyncio.create_task(supervisor.run(), name="accordion-leader-election")
    memo.supervisor = supervisor
    log.info(
        "accordion operator started as %s, standby until it holds lease %s/%s (namespaces: %s)",
        me,
        namespace,
        cfg.leader_lease_name,
        ",".join(cfg.namespaces) or "all",
    )


@kopf.on.probe(id="leader")
def leader_probe(memo: kopf.Memo, **_: Any) -> str:
    """Shown in /healthz's JSON: "leader" or "standby". A standby is healthy and Ready (the
    chart's probes pass on both); only the leader reconciles."""
    supervisor: Supervisor | None = memo.get("supervisor")
    if supervisor is None or (supervisor.running is not None and supervisor.elector.leading()):
        return "leader"
    return "standby"


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "supervisor" in memo:
        await memo.supervisor.shutdown()
    if "running" in memo:
        await memo.running.shutdown()
    server = memo.get("metrics_server")
    if server is not None:
        server.shutdown()
