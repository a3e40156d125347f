"""Kueue in the local cluster (`accordion-dev cluster up --kueue`): its manager as a local process.

`e2e/build.sh` builds Kueue's manager from the pinned Go module (sigs.k8s.io/kueue) and copies
the same module's CRDs and webhook manifests beside it (`<bin>/kueue-config`). At start this
module does what Kueue's kustomize install does, for a manager that listens on 127.0.0.1
instead of behind a Service:

- its CRDs, the five with several served versions converted by Kueue's `/convert` webhook;
- its mutating and validating webhooks for its own kinds and the enabled integrations
  (`FRAMEWORKS`), each pointing at `https://127.0.0.1:<port><path>`;
- a serving certificate of its own CA (`pki.generate_webhook`), valid for 127.0.0.1 and for the
  Service name Kueue's cert rotator checks, stored in the Secret the rotator reads, so the
  rotator finds it valid and only re-injects the same CA bundle (it would otherwise mint a
  certificate for the Service name alone, which a call to 127.0.0.1 cannot verify);
- a `Configuration` (`config`) in `<state>/kueue/config.yaml`: leader election off, the
  integrations, client rate limits from `ClusterConfig`.

The manager runs with the admin kubeconfig (system:masters): the local cluster's other
controllers run as their own identities, Kueue does not yet.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from accordion_dev import pki

if TYPE_CHECKING:
    from accordion_dev.cluster import Cluster

NAMESPACE = "kueue-system"
#: Kueue's names from its kustomize install: the cert rotator derives the webhook
#: configurations' names from the Service's and verifies the certificate against its DNS name
SERVICE = "kueue-webhook-service"
CERT_SECRET = "kueue-webhook-server-cert"  # noqa: S105 - a name, no secret
WEBHOOK_CONFIGS = {
    "MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
    "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration",
}
#: the CRDs whose versions Kueue converts through its webhook (kustomize's webhook_in_* patches,
#: and the CRDs its cert rotator injects the CA into: it waits for all of them)
CONVERSION_CRDS = (
    "localqueues.kueue.x-k8s.io",
    "clusterqueues.kueue.x-k8s.io",
    "workloads.kueue.x-k8s.io",
    "cohorts.kueue.x-k8s.io",
    "multikueueclusters.kueue.x-k8s.io",
)
#: integrations Kueue manages here, with the webhook path segment each one's webhooks serve.
#: Only these webhooks are registered: one of a disabled integration has no handler and, with
#: `failurePolicy: Fail`, would refuse every object of its kind (pods, for `pod`).
FRAMEWORKS = {"batch/job": "batch-v1-job"}
#: config/components/manager/controller_manager_config.yaml (and the Helm chart's values)
SHIPPED_CONCURRENCY = {
    "Job.batch": 5,
    "Pod": 5,
    "Workload.kueue.x-k8s.io": 5,
    "LocalQueue.kueue.x-k8s.io": 1,
    "Cohort.kueue.x-k8s.io": 1,
    "ClusterQueue.kueue.x-k8s.io": 1,
    "ResourceFlavor.kueue.x-k8s.io": 1,
}
#: feature gates set unless ClusterConfig.kueue_feature_gates says otherwise. The visibility
#: API server (VisibilityOnDemand, on by default) finds its delegated authentication only in a
#: pod (in-cluster configuration) and exits the manager without it; lost with it: the
#: visibility.kueue.x-k8s.io API of pending workloads (it would also need an APIService).
DEFAULT_GATES = {"VisibilityOnDemand": False}
#: Kueue's client rate limits as its shipped configuration (kustomize and Helm) sets them
DEFAULT_QPS = 50.0
DEFAULT_BURST = 100


def config_dir(bins: Path) -> Path:
    """The pinned module's CRDs (`crds/`) and webhook manifests, as build.sh copied them."""
    return bins / "kueue-config"


def configuration(
    *,
    webhook_port: int,
    health_port: int,
    metrics_port: int,
    cert_dir: Path,
    qps: float,
    burst: int,
    feature_gates: dict[str, bool],
) -> dict[str, Any]:
    """Kueue's `Configuration` for a manager on 127.0.0.1 (config.kueue.x-k8s.io/v1beta2)."""
    cfg: dict[str, Any] = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        # one manager, nothing to elect (and no Lease to wait out after a restart)
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": SERVICE,
            "webhookSecretName": CERT_SECRET,
        },
        "clientConnection": {"qps": qps, "burst": burst},
        # the reconcilers' concurrency of its shipped configuration (Go's default is 1 each)
        "controller": {"groupKindConcurrency": dict(SHIPPED_CONCURRENCY)},
        # Jobs without the queue-name label are not Kueue's (a cluster shared with other tests)
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(FRAMEWORKS)},
    }
    cfg["featureGates"] = {**DEFAULT_GATES, **feature_gates}
    return cfg


def _client_config(url: str, ca_pem: bytes) -> dict[str, Any]:
    return {"url": url, "caBundle": base64.b64encode(ca_pem).decode()}


def webhook_configurations(
    manifests: list[dict[str, Any]], base_url: str, ca_pem: bytes
) -> list[dict[str, Any]]:
    """Kueue's webhook configurations (config/components/webhook/manifests.yaml) for a manager
    at `base_url`: named as the cert rotator expects, each webhook called by URL, and only the
    webhooks of Kueue's own kinds and of the enabled integrations (`FRAMEWORKS`)."""
    wanted = ("-kueue-x-k8s-io-", *(f"-{segment}" for segment in FRAMEWORKS.values()))
    out = []
    for doc in manifests:
        if doc.get("kind") not in WEBHOOK_CONFIGS:
            continue
        hooks = []
        for hook in doc.get("webhooks") or []:
            path = hook["clientConfig"]["service"]["path"]
            if not any(w in path for w in wanted):
                continue
            hook = copy.deepcopy(hook)
            hook["clientConfig"] = _client_config(base_url + path, ca_pem)
            hooks.append(hook)
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": doc["kind"],
                "metadata": {"name": WEBHOOK_CONFIGS[doc["kind"]]},
                "webhooks": hooks,
            }
        )
    return out


def with_conversion(crd: dict[str, Any], base_url: str, ca_pem: bytes) -> dict[str, Any]:
    """A CRD of CONVERSION_CRDS with its versions converted by Kueue at `base_url`/convert
    (kustomize's webhook_in_<kind>.yaml patch); other CRDs unchanged."""
    if crd["metadata"]["name"] not in CONVERSION_CRDS:
        return crd
    crd = copy.deepcopy(crd)
    crd["spec"]["conversion"] = {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": _client_config(f"{base_url}/convert", ca_pem),
            "conversionReviewVersions": ["v1"],
        },
    }
    return crd


def remove_webhooks(cluster: Cluster) -> None:
    """Unregister Kueue's admission webhooks (a cluster started without Kueue on a state
    directory that had it): with `failurePolicy: Fail` they would refuse every Job."""
    with cluster.http() as http:
        for kind, name in WEBHOOK_CONFIGS.items():
            plural = kind.lower() + "s"
            http.delete(f"/apis/admissionregistration.k8s.io/v1/{plural}/{name}")


def _apply(cluster: Cluster, docs: list[dict[str, Any]], path: Path) -> None:
    path.touch(mode=0o600)  # objects.yaml holds the webhook CA's key (in the Secret)
    path.write_text(yaml.safe_dump_all(docs))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))


def start(cluster: Cluster, bins: Path) -> None:
    """Register Kueue's CRDs, webhooks and serving certificate, start its manager and wait
    until it is ready (its webhooks serve: /readyz waits for them)."""
    from accordion_dev.cluster import free_port_block

    cfg = cluster.config
    state = cluster.state_dir / "kueue"
    certs = state / "certs"
    state.mkdir(parents=True, exist_ok=True)
    first = free_port_block(first=cfg.base_port + 11, size=3)
    ports = {"webhook": first, "health": first + 1, "metrics": first + 2}
    (state / "ports.json").write_text(json.dumps(ports))
    base_url = f"https://127.0.0.1:{ports['webhook']}"

    # A fresh certificate on every start: nothing to renew, and the Secret always matches it.
    pki.generate_webhook(
        certs, "webhook", "kueue-ca", [f"{SERVICE}.{NAMESPACE}.svc", f"{SERVICE}.{NAMESPACE}"]
    )
    ca_pem = (certs / "webhook-ca.crt").read_bytes()
    # controller-runtime's webhook server reads tls.crt/tls.key from its certDir (in a pod the
    # kubelet mounts the Secret there)
    (certs / "tls.crt").write_bytes((certs / "webhook.crt").read_bytes())
    (certs / "tls.key").write_bytes((certs / "webhook.key").read_bytes())
    (certs / "tls.key").chmod(0o600)

    src = config_dir(bins)
    crds = [
        with_conversion(yaml.safe_load(p.read_text()), base_url, ca_pem)
        for p in sorted((src / "crds").glob("*.yaml"))
    ]
    _apply(cluster, crds, state / "crds.yaml")
    manifests = list(yaml.safe_load_all((src / "webhooks.yaml").read_text()))
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CERT_SECRET, "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {
            name: base64.b64encode((certs / f).read_bytes()).decode()
            for name, f in {
                "ca.crt": "webhook-ca.crt",
                "ca.key": "webhook-ca.key",
                "tls.crt": "webhook.crt",
                "tls.key": "webhook.key",
            }.items()
        },
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    _apply(
        cluster,
        [namespace, secret, *webhook_configurations(manifests, base_url, ca_pem)],
        state / "objects.yaml",
    )
    with cluster.http() as http:
        for name in (c["metadata"]["name"] for c in crds):
            _wait_established(http, name)

    config_file = state / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(
            configuration(
                webhook_port=ports["webhook"],
                health_port=ports["health"],
                metrics_port=ports["metrics"],
                cert_dir=certs,
                qps=cfg.kueue_qps,
                burst=cfg.kueue_burst,
                feature_gates=cfg.kueue_feature_gates,
            )
        )
    )
    proc = cluster.procs.start(
        "kueue",
        [str(bins / "kueue"), f"--config={config_file}"],
        env={"KUBECONFIG": str(cluster.kubeconfig)},
    )
    ready = f"http://127.0.0.1:{ports['health']}/readyz"
    # Its first start bootstraps the certificates and injects the CA (cert-controller's backoff
    # polls every 1-2 s); later ones find them in place.
    cluster._wait("kueue", lambda: httpx.get(ready, timeout=2).status_code == 200, proc, 120)


def running_as_configured(cluster: Cluster) -> bool:
    """Whether the Configuration Kueue was started with has the feature gates and client rate
    limits `cluster.config` asks for now."""
    path = cluster.state_dir / "kueue" / "config.yaml"
    if not path.exists():
        return False
    cfg = yaml.safe_load(path.read_text())
    want = cluster.config
    return bool(
        cfg.get("featureGates") == {**DEFAULT_GATES, **want.kueue_feature_gates}
        and cfg["clientConnection"] == {"qps": want.kueue_qps, "burst": want.kueue_burst}
    )


def health_url(cluster: Cluster) -> str | None:
    """Kueue's readiness endpoint, or None if it was not started from this state directory."""
    path = cluster.state_dir / "kueue" / "ports.json"
    if not path.exists():
        return None
    return f"http://127.0.0.1:{json.loads(path.read_text())['health']}/readyz"


def _wait_established(http: httpx.Client, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = http.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = (crd.json().get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            return
        time.sleep(0.1)
    raise TimeoutError(f"CRD {name} not Established after {timeout:.0f} s")


# ---- objects for tests and benchmarks ---------------------------------------------------------
API = "/apis/kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def resource_flavor(name: str, node_labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A ResourceFlavor; Kueue adds `node_labels` to the node selector of the pods it admits."""
    spec = {"nodeLabels": dict(node_labels)} if node_labels else {}
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": name},
        "spec": spec,
    }


def cluster_queue(
    name: str, flavor: str, gpus: int, namespaces: list[str] | None = None
) -> dict[str, Any]:
    """A ClusterQueue with `gpus` nvidia.com/gpu of `flavor`, for the pods of `namespaces`
    (every namespace if None), first come first served."""
    selector: dict[str, Any] = (
        {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
            ]
        }
        if namespaces is not None
        else {}
    )
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": selector,
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": [
                {
                    "coveredResources": ["nvidia.com/gpu"],
                    "flavors": [
                        {
                            "name": flavor,
                            "resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus}],
                        }
                    ],
                }
            ],
        },
    }


def local_queue(name: str, namespace: str, cluster_queue: str) -> dict[str, Any]:
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue},
    }


def gpu_job(name: str, queue: str, gpus: int = 1, keep_running: bool = True) -> dict[str, Any]:
    """A batch/v1 Job of one pod with `gpus` GPUs, submitted to LocalQueue `queue`, tolerating
    the kwok and GPU taints (the node selector comes from the flavor). `keep_running`: its pod
    stays Running on a kwok node instead of completing at once (KWOK_KEEP_RUNNING)."""
    from accordion_dev.cluster import GPU, GPU_TOLERATION, KWOK_KEEP_RUNNING, KWOK_TOLERATION

    labels = {KWOK_KEEP_RUNNING: "true"} if keep_running else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue}},
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "tolerations": [KWOK_TOLERATION, GPU_TOLERATION],
                    "containers": [
                        {
                            "name": "main",
                            "image": "registry.invalid/job:1",
                            "resources": {"limits": {GPU: str(gpus)}},
                        }
                    ],
                },
            },
        },
    }
