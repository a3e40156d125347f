"""Desired child objects of a TrainingRun, as plain dicts (docs/contract.md is the spec).

Pure functions: the same run and config always build the same object (except the SSH key pair,
made by `new_ssh_keypair`, which the caller passes in).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from accordion_operator.api.trainingrun import PLURAL, ObjectStore, TrainingRun
from accordion_operator.config import LAUNCHER_POLICY, Config
from accordion_operator.core.objects import (
    LABEL_EXPERIMENT,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    TRAININGRUNS,
    owner_reference,
)

LABEL_RUN = "accordion.dev/run"
LABEL_ROLE = "accordion.dev/role"
LABEL_INDEX = "accordion.dev/worker-index"
ROLE_WORKER = "worker"
ROLE_LAUNCHER = "launcher"
SSH_DIR = "/etc/accordion/ssh"
#: where a worker stages its data in (an emptyDir)
DATA_DIR = "/var/lib/accordion/data"
#: the Secret keys of a credentialsSecret (contract)
ACCESS_KEY, SECRET_KEY = "accessKey", "secretKey"


def worker_name(run: str, index: int) -> str:
    return f"{run}-worker-{index}"


def launcher_name(run: str) -> str:
    return f"{run}-launcher"


#: the launcher's ServiceAccount, Role and RoleBinding: one each per namespace, shared by the
#: namespace's runs (docs/trainingrun.md, "Security model")
LAUNCHER_IDENTITY = "accordion-launcher"


def ssh_secret_name(run: str) -> str:
    return f"{run}-ssh"


def selector(run: str) -> str:
    """The label selector of a run's Horovod hosts (status.selector, the scale subresource): its
    worker pods and a launcher that hosts worker 0, the pods that carry a worker index."""
    return f"{LABEL_RUN}={run},{LABEL_INDEX}"


def labels(run: TrainingRun, role: str, cfg: Config, index: int | None = None) -> dict[str, str]:
    out = {
        **cfg.pod_labels(),
        LABEL_NAME: "accordion",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RUN: run.metadata.name,
        LABEL_ROLE: role,
    }
    if index is not None:
        out[LABEL_INDEX] = str(index)
    experiment = run.metadata.labels.get(LABEL_EXPERIMENT)
    if experiment:
        out[LABEL_EXPERIMENT] = experiment
    return out


def _meta(
    run: TrainingRun, name: str, role: str, cfg: Config, index: int | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": run.metadata.namespace,
        "labels": labels(run, role, cfg, index),
        "ownerReferences": [owner_reference(TRAININGRUNS, run.metadata.name, run.metadata.uid)],
    }


# --- auth ----------------------------------------------------------------------------------------


def new_ssh_keypair() -> tuple[str, str]:
    """A fresh ed25519 key pair: (OpenSSH private key, `ssh-ed25519 ...` public key)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public


def build_ssh_secret(run: TrainingRun, cfg: Config, keypair: tuple[str, str]) -> dict[str, Any]:
    private, public = keypair
    comment = f"accordion-{run.metadata.name}"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(run, ssh_secret_name(run.metadata.name), ROLE_LAUNCHER, cfg),
        "type": "Opaque",
        "stringData": {
            "id_ed25519": private,
            "id_ed25519.pub": f"{public} {comment}\n",
            "authorized_keys": f"{public} {comment}\n",
        },
    }


#: the owner of a namespace's launcher identity: the admission policy it relies on, or none
Owner = dict[str, Any] | None


def policy_owner(policy: Mapping[str, Any]) -> dict[str, Any]:
    """An ownerReference to the launcher admission policy (cluster-scoped): the garbage collector
    removes the identities in every namespace when the policy goes (`helm uninstall`)."""
    meta = policy["metadata"]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "name": meta["name"],
        "uid": meta["uid"],
    }


def _identity_meta(namespace: str, cfg: Config, owner: Owner) -> dict[str, Any]:
    """A namespace's launcher identity belongs to no one run (the operator removes it once the
    namespace has had no run for a while: `trainingrun.identity`)."""
    meta: dict[str, Any] = {
        "name": LAUNCHER_IDENTITY,
        "namespace": namespace,
        "labels": {
            **cfg.pod_labels(),
            LABEL_NAME: "accordion",
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_ROLE: ROLE_LAUNCHER,
        },
    }
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return meta


def build_service_account(namespace: str, cfg: Config, owner: Owner = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _identity_meta(namespace, cfg, owner),
        "automountServiceAccountToken": True,
    }


def build_role(namespace: str, cfg: Config, owner: Owner = None) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _identity_meta(namespace, cfg, owner),
        "rules": [
            # host discovery: the launcher lists its run's Ready worker pods
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            # progress reports into status.training; a launcher patches its own run only, which
            # the ValidatingAdmissionPolicy of `build_launcher_policy` enforces (RBAC cannot
            # name "the run of the pod holding the token")
            {
                "apiGroups": ["accordion.dev"],
                "resources": [f"{PLURAL}/status"],
                "verbs": ["get", "patch"],
            },
        ],
    }


def build_role_binding(namespace: str, cfg: Config, owner: Owner = None) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _identity_meta(namespace, cfg, owner),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": LAUNCHER_IDENTITY,
        },
        "subjects": [{"kind": "ServiceAccount", "name": LAUNCHER_IDENTITY, "namespace": namespace}],
    }


_POD_NAME = "authentication.kubernetes.io/pod-name"


def build_launcher_policy() -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy and its binding: a status write by a launcher identity must
    come from a token bound to the pod `<run>-launcher` of the run it writes. The apiserver puts
    the pod's name into the token's user info (`authentication.kubernetes.io/pod-name`, Kubernetes
    1.30+), and only the operator creates pods of that name for a run (a pod of that name that
    the run does not control is refused its pods: `Controller._name_taken`)."""
    user = f"system:serviceaccount:' + request.namespace + ':{LAUNCHER_IDENTITY}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": LAUNCHER_POLICY, "labels": {LABEL_NAME: "accordion"}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["accordion.dev"],
                        "apiVersions": ["*"],
                        "operations": ["UPDATE"],
                        "resources": [f"{PLURAL}/status"],
                    }
                ]
            },
            "matchConditions": [
                {"name": "is-a-launcher", "expression": f"request.userInfo.username == '{user}'"}
            ],
            "validations": [
                {
                    "expression": (
                        f"'{_POD_NAME}' in request.userInfo.extra && "
                        f"request.userInfo.extra['{_POD_NAME}'] == "
                        "[object.metadata.name + '-launcher']"
                    ),
                    "messageExpression": (
                        "'a launcher writes the status of its own run only: this token is not "
                        "bound to the pod ' + object.metadata.name + '-launcher'"
                    ),
                    "reason": "Forbidden",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": LAUNCHER_POLICY, "labels": {LABEL_NAME: "accordion"}},
        "spec": {"policyName": LAUNCHER_POLICY, "validationActions": ["Deny"]},
    }
    return [policy, binding]


# --- pods ----------------------------------------------------------------------------------------


def _store_env(prefix: str, store: ObjectStore) -> list[dict[str, Any]]:
    return [
        {"name": f"ACCORDION_{prefix}_ENDPOINT", "value": store.endpoint},
        {"name": f"ACCORDION_{prefix}_BUCKET", "value": store.bucket},
        {"name": f"ACCORDION_{prefix}_PREFIX", "value": store.prefix},
        {"name": f"ACCORDION_{prefix}_SECURE", "value": "true" if store.secure else "false"},
    ]


def common_env(run: TrainingRun, cfg: Config) -> list[dict[str, Any]]:
    """Environment of both the launcher and the workers (contract table)."""
    spec = run.spec
    model = spec.model.model_dump(by_alias=True, exclude_none=True)
    env: list[dict[str, Any]] = [
        {"name": "ACCORDION_RUN_NAME", "value": run.metadata.name},
        {"name": "ACCORDION_NAMESPACE", "value": run.metadata.namespace},
        {"name": "ACCORDION_RUN_UID", "value": run.metadata.uid},
        {"name": "ACCORDION_MIN_WORKERS", "value": str(spec.workers.min)},
        {"name": "ACCORDION_MAX_WORKERS", "value": str(spec.workers.max)},
        # a worker pod is one Horovod host with a slot (a process) per GPU
        {"name": "ACCORDION_GPUS_PER_WORKER", "value": str(spec.workers.gpus_per_worker)},
        {"name": "ACCORDION_SSH_DIR", "value": SSH_DIR},
        {"name": "ACCORDION_SSH_PORT", "value": str(cfg.ssh_port)},
        {"name": "ACCORDION_MODEL", "value": json.dumps(model, sort_keys=True)},
        {"name": "ACCORDION_HPARAMS", "value": json.dumps(spec.hyperparameters, sort_keys=True)},
        {"name": "ACCORDION_EPOCHS", "value": str(spec.epochs)},
        {"name": "ACCORDION_BATCH_SIZE", "value": str(spec.batch_size)},
        {"name": "ACCORDION_CHECKPOINT_EPOCHS", "value": str(spec.checkpoint_epochs)},
        {"name": "ACCORDION_METRICS_PORT", "value": str(cfg.metrics_port)},
        # sshd and /metrics bind to the pod IP (contract): on process nodes pods share a netns
        {"name": "ACCORDION_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if spec.data is not None:
        env += _store_env("DATA", spec.data)
    env += _store_env("RESULTS", spec.results)
    # this run object's own folder under the prefix: no other run's checkpoints are ever there
    env.append({"name": "ACCORDION_RESULTS_PATH", "value": run.results_path})
    return env


def _credentials_env(run: TrainingRun) -> list[dict[str, Any]]:
    """Each store's keys from its own Secret, under names that say which store they open
    (ACCORDION_DATA_* for stage-in, ACCORDION_RESULTS_* for results and checkpoints): a data
    Secret that differs from the results one is used for the data bucket only. Workers only:
    horovodrun copies the launcher's environment onto the ssh command line."""
    stores = [("RESULTS", run.spec.results)]
    if run.spec.data is not None:
        stores.insert(0, ("DATA", run.spec.data))
    return [
        {
            "name": f"ACCORDION_{kind}_{env}",
            "valueFrom": {"secretKeyRef": {"name": store.credentials_secret.name, "key": key}},
        }
        for kind, store in stores
        for env, key in (("ACCESS_KEY_ID", ACCESS_KEY), ("SECRET_ACCESS_KEY", SECRET_KEY))
    ]


def _placement(run: TrainingRun) -> dict[str, Any]:
    spec = run.spec
    out: dict[str, Any] = {}
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    if spec.affinity is not None and spec.affinity.node_affinity is not None:
        out["affinity"] = spec.affinity.model_dump(by_alias=True, exclude_none=True)
    if spec.priority_class_name is not None:
        # The pods carry the run's class too: the namespace's ResourceQuota scopes on the class
        # then apply to them, and the kube-scheduler orders them as the allocator did.
        out["priorityClassName"] = spec.priority_class_name
    return out


def alone(run: TrainingRun) -> bool:
    """Whether a launcher hosting worker 0 of `run` is its only Horovod host for good: the run
    has at most one worker pod (horovodrun's --max-np is fixed at the launcher's start). Such
    a launcher makes its ssh key pair in its own pod (the trainer: ACCORDION_WORKER_INDEX with
    ACCORDION_MAX_WORKERS=1), and the run has no ssh Secret: a write less, and a key that never
    leaves the pod."""
    return run.spec.workers.max == 1


def mounts_ssh_secret(pod: Mapping[str, Any]) -> bool:
    """Whether `pod` needs the run's ssh Secret (its `ssh` volume)."""
    return any(v.get("name") == "ssh" for v in pod["spec"].get("volumes") or ())


def _ssh_volume(run: TrainingRun) -> dict[str, Any]:
    # 0440 (+ fsGroup when the image runs as non-root): the trainer copies the keys into private
    # 0600 files itself; 0400 would leave them unreadable to a non-root user (contract).
    return {
        "name": "ssh",
        "secret": {"secretName": ssh_secret_name(run.metadata.name), "defaultMode": 0o440},
    }


def _pod_security(cfg: Config) -> dict[str, Any]:
    """The pod-level securityContext: with a run-as user, what the `restricted` Pod Security
    Standard asks of a pod (a namespace labelled pod-security.kubernetes.io/enforce=restricted
    admits it)."""
    ctx: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if cfg.pod_run_as_user:
        uid = cfg.pod_run_as_user
        ctx |= {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid}
    if cfg.pod_fs_group:
        ctx["fsGroup"] = cfg.pod_fs_group
    return {"securityContext": ctx}


#: what `restricted` asks of every container: sshd serves an unprivileged port as the pod's user
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def _image(run: TrainingRun, cfg: Config) -> tuple[str, str]:
    return run.spec.image or cfg.trainer_image, run.spec.image_pull_policy or cfg.image_pull_policy


def build_worker_pod(run: TrainingRun, index: int, cfg: Config) -> dict[str, Any]:
    """One Horovod host with a slot per GPU (contract: one host per pod, so a lost worker
    blacklists no other)."""
    w = run.spec.workers
    image, pull = _image(run, cfg)
    resources: dict[str, Any] = {"cpu": w.cpu, "memory": w.memory}
    if w.gpus_per_worker:
        resources[cfg.gpu_resource] = str(w.gpus_per_worker)
    name = worker_name(run.metadata.name, index)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(run, name, ROLE_WORKER, cfg, index),
        "spec": {
            # The operator replaces a failed worker itself (a new pod, maybe on another node).
            "restartPolicy": "Never",
            "hostname": name,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 30,
            **_pod_security(cfg),
            **_placement(run),
            "containers": [
                {
                    "name": "worker",
                    "image": image,
                    "imagePullPolicy": pull,
                    "securityContext": dict(CONTAINER_SECURITY),
                    "command": ["python", "-m", "accordion_trainer", "worker"],
                    "env": [
                        *common_env(run, cfg),
                        {"name": "ACCORDION_WORKER_INDEX", "value": str(index)},
                        # the training process reports its pod in status.training.worldPods
                        {
                            "name": "ACCORDION_POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        {"name": "ACCORDION_DATA_DIR", "value": DATA_DIR},
                        *_credentials_env(run),
                    ],
                    "ports": [
                        {"name": "ssh", "containerPort": cfg.ssh_port},
                        {"name": "metrics", "containerPort": cfg.metrics_port},
                    ],
                    "resources": {"requests": resources, "limits": dict(resources)},
                    "readinessProbe": {
                        "tcpSocket": {"port": cfg.ssh_port},
                        "periodSeconds": 1,
                        "failureThreshold": 3,
                    },
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {"name": "ssh", "mountPath": SSH_DIR, "readOnly": True},
                        {"name": "data", "mountPath": DATA_DIR},
                    ],
                }
            ],
            "volumes": [_ssh_volume(run), {"name": "data", "emptyDir": {}}],
        },
    }


def build_launcher_pod(run: TrainingRun, cfg: Config, hosts_worker: bool = False) -> dict[str, Any]:
    """The elastic driver (`horovodrun`); restarted by the operator with exponential backoff.
    With `hosts_worker`, the pod is worker 0 as well (`_hosting_launcher_pod`)."""
    if hosts_worker:
        return _hosting_launcher_pod(run, cfg)
    image, pull = _image(run, cfg)
    name = launcher_name(run.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(run, name, ROLE_LAUNCHER, cfg),
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": LAUNCHER_IDENTITY,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 30,
            **_pod_security(cfg),
            **_placement(run),
            "containers": [
                {
                    "name": "launcher",
                    "image": image,
                    "imagePullPolicy": pull,
                    "securityContext": dict(CONTAINER_SECURITY),
                    "command": ["python", "-m", "accordion_trainer", "launcher"],
                    "env": common_env(run, cfg),
                    "resources": {
                        "requests": {"cpu": cfg.launcher_cpu, "memory": cfg.launcher_memory},
                        "limits": {"memory": cfg.launcher_memory},
                    },
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [{"name": "ssh", "mountPath": SSH_DIR, "readOnly": True}],
                }
            ],
            "volumes": [_ssh_volume(run)],
        },
    }


def _hosting_launcher_pod(run: TrainingRun, cfg: Config) -> dict[str, Any]:
    """The launcher that hosts worker 0 (Config.launcher_hosts_worker): worker 0's pod (its
    resources, data volume, credentials, ssh port and readiness) under the launcher's name, role
    and identity, running the `launcher` command. It keeps the launcher's name, which the
    admission policy checks, and carries worker-index 0: the trainer's host discovery lists it
    first, so rank 0 trains here and a shrink, which never takes the launcher, never moves it.
    The trainer knows it hosts a worker by ACCORDION_WORKER_INDEX in its environment."""
    pod = build_worker_pod(run, 0, cfg)
    name = launcher_name(run.metadata.name)
    pod["metadata"] = _meta(run, name, ROLE_LAUNCHER, cfg, 0)
    spec = pod["spec"]
    del spec["automountServiceAccountToken"]
    spec |= {"hostname": name, "serviceAccountName": LAUNCHER_IDENTITY}
    container = spec["containers"][0]
    container |= {"name": "launcher", "command": ["python", "-m", "accordion_trainer", "launcher"]}
    if alone(run):
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "ssh"]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "ssh"]
    return pod
