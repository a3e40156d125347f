"""Operator settings: every one comes from an `ACCORDION_*` environment variable.

Each setting is documented with a `#:` comment; `python -m accordion_operator --help-config`
prints the table (name, default, meaning) that the Helm chart's values mirror.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


def _split(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


#: bind_address's name for "the pod's own IP, from $POD_IP"
POD_IP = "pod-ip"
#: bind_address's default: Prometheus and the kubelet call the pod's IP from outside
EVERY_ADDRESS = "0.0.0.0"  # noqa: S104
#: the launcher admission policy of an install without the chart
#: (helm/accordion/files/launcher-policy.json)
LAUNCHER_POLICY = "accordion-launcher-own-run"


@dataclass(frozen=True)
class Config:
    #: Trainer image used when a TrainingRun has no spec.image.
    trainer_image: str = "ghcr.io/accordion-dev/accordion-trainer:0.1.0"
    #: imagePullPolicy of the pods when the run does not set one.
    image_pull_policy: str = "IfNotPresent"
    #: Comma-separated namespaces to watch; empty = cluster-wide (needs ClusterRole RBAC).
    namespaces: tuple[str, ...] = ()
    #: Built-in models the trainer ships (spec.model.builtin must be one of them).
    builtin_models: tuple[str, ...] = ("mnist-cnn", "mnist-cnn3", "mlp")
    #: Seconds between full reconcile passes even without any watch event (level-based safety net).
    resync_seconds: float = 10.0
    #: Seconds to wait after a watch event before reconciling, to batch bursts of events.
    debounce_seconds: float = 0.2
    #: Seconds after a run's worker count changed during which the allocator keeps that count
    #: unless GPUs must be freed for a higher priority (hysteresis against oscillation).
    scale_cooldown_seconds: float = 30.0
    #: First launcher restart delay; doubles per restart (exponential backoff).
    launcher_backoff_seconds: float = 10.0
    #: Upper bound of the launcher restart delay.
    launcher_backoff_max_seconds: float = 300.0
    #: Concurrent write requests to the apiserver (pod creation/deletion, status patches).
    max_concurrent_requests: int = 32
    #: Runs acted on together within a pass (bounds a pass's memory; first pods start sooner).
    batch_runs: int = 200
    #: Seconds a pass may act (and at least 4 times its fixed cost) before it ends early for runs
    #: created since it began (the next pass starts at once and decides new runs before status
    #: refreshes); 0 = never.
    pass_yield_seconds: float = 5.0
    #: Seconds between full re-lists of runs, pods and nodes (repairs a missed watch event).
    relist_seconds: float = 300.0
    #: SSH port the workers serve (contract: ACCORDION_SSH_PORT).
    ssh_port: int = 2222
    #: Prometheus port of each worker (contract: ACCORDION_METRICS_PORT).
    metrics_port: int = 9400
    #: Port of the operator's Prometheus /metrics (docs/metrics.md); 0 disables it.
    operator_metrics_port: int = 9090
    #: Port of the operator's liveness endpoint (kopf's /healthz).
    health_port: int = 8080
    #: Address the operator's /metrics and /healthz listen on: an IP, or `pod-ip` for the one in
    #: $POD_IP (the chart's default, from the downward API status.podIP; where pods share one
    #: network namespace, as on the local process nodes, two replicas on 0.0.0.0 collide).
    #: `pod-ip` without $POD_IP (a process outside a pod) listens on every address.
    bind_address: str = EVERY_ADDRESS
    #: CPU request of a launcher pod (it only runs horovodrun and ssh).
    launcher_cpu: str = "250m"
    #: Memory request and limit of a launcher pod.
    launcher_memory: str = "512Mi"
    #: fsGroup of the pods (0 = unset); set it when the trainer image runs as a non-root user,
    #: so that the ssh Secret's files (mode 0440) are readable.
    pod_fs_group: int = 10001
    #: uid and gid the training containers run as (the trainer image's user); with it the pods
    #: meet the `restricted` Pod Security Standard. 0 = the image's own user, without
    #: runAsNonRoot (for images that must run as root; such pods meet `baseline` only).
    pod_run_as_user: int = 10001
    #: Seconds a running run may report no training progress (status.training.updatedAt) before
    #: its launcher is restarted from the last checkpoint, and then before it fails as Stalled;
    #: 0 = never. A run's spec.progressDeadlineSeconds overrides it.
    progress_deadline_seconds: float = 1800.0
    #: Seconds a Ready worker pod may stay out of the Horovod world its trainer reports
    #: (status.training.worldPods) before it is replaced: its training process died and Horovod
    #: dropped its host for good. Must exceed the time Horovod takes to notice a new Ready worker
    #: (~1 s) plus clock skew between nodes; at most one such replacement per run per this many
    #: seconds; 0 = never.
    world_grace_seconds: float = 60.0
    #: Before a run's first pods, list its results bucket and its data prefix with its own
    #: credentials, and report a missing bucket, an empty data prefix or refused keys as
    #: Admitted=False (an endpoint the operator cannot reach does not hold the run back).
    storage_preflight: bool = True
    #: Seconds before a negative storage answer (missing bucket, empty prefix, refused keys) is
    #: asked again; doubles per answer in a row, up to 300 s.
    storage_retry_seconds: float = 10.0
    #: Resource name that counts GPUs on nodes and pods.
    gpu_resource: str = "nvidia.com/gpu"
    #: Extra labels (k=v,k=v) put on every child pod, e.g. for cost attribution.
    extra_pod_labels: tuple[str, ...] = ()
    #: Elect a leader through a coordination.k8s.io Lease, so that several replicas can run and
    #: only one acts (docs/helm.md, "High availability"); false = act at once, alone.
    leader_election: bool = True
    #: Name of the Lease (the chart sets the release's operator name).
    leader_lease_name: str = "accordion-operator"
    #: Namespace of the Lease; empty = the operator's own (its service account's namespace in a
    #: pod, else "default").
    leader_lease_namespace: str = ""
    #: Create the Lease when it is missing. The chart creates it with the release and sets
    #: false, so that a replica still stopping after `helm uninstall` cannot leave one behind.
    leader_lease_create: bool = True
    #: Seconds a standby waits after the Lease last changed before it takes over: a leader's
    #: death (SIGKILL) is noticed within this plus twice the retry period (14 s by default).
    leader_lease_seconds: float = 10.0
    #: Seconds a leader may go without renewing before it stops acting; below the lease, so the
    #: old leader stops before a standby may start.
    leader_renew_deadline_seconds: float = 7.0
    #: Seconds between a leader's renewals and between a standby's looks at the Lease.
    leader_retry_seconds: float = 2.0
    #: Name of the ValidatingAdmissionPolicy that keeps each launcher to its own run's status
    #: (the chart installs it and sets this). Checked at start (an error in the log when it is
    #: missing) and made the owner of the launchers' ServiceAccounts, Roles and RoleBindings, so
    #: that removing it (`helm uninstall`) removes them; empty = no policy, no owner.
    launcher_policy: str = LAUNCHER_POLICY
    #: Seconds a namespace keeps its launcher ServiceAccount, Role and RoleBinding with no
    #: TrainingRun in it: a team that deletes its last run and starts the next soon does not pay
    #: three deletions and three creations.
    launcher_identity_idle_seconds: float = 600.0
    #: The launcher pod also hosts the run's worker 0 (the MPI operator's runLauncherAsWorker):
    #: it requests a worker's resources, stages the data and serves ssh beside horovodrun, and
    #: the operator creates the grant's other workers only. A one-worker run is then one pod,
    #: not two (about 4 fewer apiserver writes); the cost is that training code runs in the pod
    #: that holds the launcher's token (docs/trainingrun.md, "Security model"); false gives
    #: every run a launcher pod of its own. Runs Kueue admits keep a separate launcher (their
    #: Workloads' pod sets say launcher + workers).
    launcher_hosts_worker: bool = True
    #: Log level (DEBUG, INFO, WARNING, ERROR).
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None:
                continue
            default = getattr(cls, f.name)
            if isinstance(default, tuple):
                values[f.name] = _split(raw)
            elif isinstance(default, bool):
                values[f.name] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int | float):
                try:
                    values[f.name] = type(default)(raw)
                except ValueError:
                    kind = "a whole number" if isinstance(default, int) else "a number"
                    raise ValueError(f"{env_name(f.name)}={raw!r}: not {kind}") from None
            else:
                values[f.name] = raw
        return cls(**values)

    def pod_labels(self) -> dict[str, str]:
        return dict(kv.split("=", 1) for kv in self.extra_pod_labels if "=" in kv)

    def listen_address(self, env: Mapping[str, str] | None = None) -> str:
        """The IP that bind_address names (`pod-ip`: $POD_IP, else every address); ValueError
        with the setting's name for anything that is not an IP address."""
        env = os.environ if env is None else env
        if self.bind_address == POD_IP:
            return env.get("POD_IP", "").strip() or EVERY_ADDRESS
        try:
            return str(ipaddress.ip_address(self.bind_address))
        except ValueError:
            raise ValueError(
                f"{env_name('bind_address')}={self.bind_address!r}: "
                f"neither an IP address nor {POD_IP!r}"
            ) from None


def http_host(ip: str) -> str:
    """An IP as a URL's host (IPv6 in brackets)."""
    return f"[{ip}]" if ":" in ip else ip


def env_name(field_name: str) -> str:
    return "ACCORDION_" + field_name.upper()


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, from the `#:` comments of this module."""
    import inspect

    source = inspect.getsource(Config).splitlines()
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in source:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
        elif ":" in stripped and pending:
            docs[stripped.split(":", 1)[0]] = " ".join(pending)
            pending = []
    rows = []
    for f in fields(Config):
        default = getattr(Config, f.name)
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        rows.append((env_name(f.name), shown, docs.get(f.name, "")))
    return rows
