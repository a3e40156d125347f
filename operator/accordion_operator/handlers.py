"""kopf handlers: thin. One startup starts both controllers (TrainingRun and Experiment) on one
apiserver client and one metrics registry; one cleanup stops them.

The controllers keep their own caches through plain watches (`core.cache`, `Kube.list_watch`:
why not kopf's per-object handlers is said there); kopf contributes the process (signals, the
liveness endpoint, login). No handler writes status through its return value (kopf would
put it under `status.<handler>`), and none needs a finalizer: children are deleted by the
garbage collector through their ownerReferences.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import kopf

from accordion_operator.config import Config
from accordion_operator.core.cache import stream_count
from accordion_operator.core.kube import Kube
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
    metrics_server: WSGIServer | None = None
    storage: StoragePreflight | None = None

    async def shutdown(self) -> None:
        self.stop.set()
        for _, wake in self.loops:
            wake.set()  # wake the idle loops now, not at their next resync
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        for task, _ in self.loops:
            try:
                await asyncio.wait_for(task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        if self.storage is not None:
            await self.storage.close()
        await self.kube.close()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = Config.from_env()
    configure(settings)
    logging.getLogger("accordion").setLevel(cfg.log_level)
    metrics = OperatorMetrics()
    metrics.declare_handlers(["trainingruns", "experiments"])
    streams = stream_count(cfg, [*RUN_WATCHES, *EXPERIMENT_WATCHES])
    kube = await Kube.connect(cfg, metrics, streams=streams)
    cache = ClusterCache(cfg)
    storage = StoragePreflight(kube, cache.dirty.set) if cfg.storage_preflight else None
    runs = Controller(cfg, kube, cache, metrics=metrics, storage=storage)
    experiments = ExperimentController(cfg, kube, ExperimentCache(), metrics=metrics)
    running = Running(kube, asyncio.Event(), storage=storage)
    if cfg.operator_metrics_port:
        running.metrics_server, _thread = start_metrics_server(cfg.operator_metrics_port, metrics)
    for name, ctl in (("trainingruns", runs), ("experiments", experiments)):
        task = asyncio.create_task(ctl.run_forever(running.stop), name=f"accordion-{name}")
        running.loops.append((task, ctl.cache.dirty))
    memo.running = running
    log.info("accordion operator started (namespaces: %s)", ",".join(cfg.namespaces) or "all")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    running: Running = memo.running
    await running.shutdown()
