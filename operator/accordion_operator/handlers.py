"""kopf handlers: thin. They start and stop the controller, which keeps its own cache of runs,
pods and nodes through plain watches (see `Kube.watch` for why not kopf's per-object handlers).

No handler writes status through its return value (kopf would put it under `status.<handler>`);
the controller writes status explicitly. No handler needs a finalizer: children are deleted by
the garbage collector through their ownerReferences.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import kopf

from accordion_operator.api.common import GROUP
from accordion_operator.api.trainingrun import PLURAL
from accordion_operator.builders import LABEL_EXPERIMENT
from accordion_operator.config import Config
from accordion_operator.controller import Controller
from accordion_operator.kube import ClusterCache, Kube
from accordion_operator.metrics import OperatorMetrics, start_metrics_server


def configure(settings: kopf.OperatorSettings, cfg: Config) -> None:
    """kopf settings for this operator (tested without a cluster)."""
    # We register no change-detecting handlers, but keep kopf's bookkeeping out of status anyway.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    # Exactly one replica acts: kopf has no leader election (peering would only pause kopf's
    # own handlers, not our controller loop). The Deployment runs 1 replica, strategy Recreate.
    settings.peering.standalone = True
    # Our Events are explicit; do not turn every log line into a Kubernetes Event.
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.queueing.idle_timeout = 1.0  # per-object workers exit sooner: less memory at scale
    # kopf itself watches TrainingRuns only for the Experiment controller's children (its
    # on.event handler filters on this label anyway); filtering on the server spares kopf's
    # per-object machinery every event of the 10,000 runs that belong to no experiment.
    settings.watching.label_selectors[GROUP, PLURAL] = LABEL_EXPERIMENT


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


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    cfg = Config.from_env()
    configure(settings, cfg)
    logging.getLogger("accordion").setLevel(cfg.log_level)
    cache = ClusterCache(cfg)
    # shared with the Experiment controller, whichever startup handler runs first
    metrics: OperatorMetrics = memo.setdefault("metrics", OperatorMetrics())
    metrics.declare_handlers(["trainingruns"])
    if cfg.operator_metrics_port:
        server, _thread = start_metrics_server(cfg.operator_metrics_port, metrics)
        memo.metrics_server = server
    kube = await Kube.connect(cfg, metrics, watches=True)
    controller = Controller(cfg, kube, cache, metrics=metrics)
    memo.metrics = metrics  # shared with the Experiment controller
    stop = asyncio.Event()
    memo.cfg, memo.cache, memo.controller, memo.stop = cfg, cache, controller, stop
    memo.task = asyncio.create_task(controller.run_forever(stop), name="accordion-controller")
    logger.info("accordion operator started (namespaces: %s)", ",".join(cfg.namespaces) or "all")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    memo.cache.dirty.set()  # wake the idle loop now, not at its next resync
    if getattr(memo, "metrics_server", None) is not None:
        memo.metrics_server.shutdown()
    task: asyncio.Task[None] = memo.task
    try:
        await asyncio.wait_for(task, timeout=10)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
    await memo.controller.kube.close()
