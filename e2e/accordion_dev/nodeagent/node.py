"""The Node object and its Lease as kubelet would publish them (pure builders)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

from accordion_dev.nodeagent.alloc import GPU, node_ip
from accordion_dev.nodeagent.kube import now_micro, now_rfc3339

Obj = dict[str, Any]
PROCESS_NODE_LABEL = "accordion.dev/process-node"
AGENT_VERSION = "v1.36.3-accordion-process-node"
LEASE_SECONDS = 40


@dataclass(frozen=True)
class NodeConfig:
    name: str
    index: int
    gpus: int = 1
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    taints: tuple[Obj, ...] = field(default_factory=tuple)
    #: the kubelet-compatible log endpoint's port on the node IP (`kubectl logs`)
    kubelet_port: int = 10250

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    def resources(self) -> dict[str, str]:
        return {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods), GPU: str(self.gpus)}


def parse_taint(s: str) -> Obj:
    """`key=value:Effect` or `key:Effect`."""
    kv, _, effect = s.rpartition(":")
    if not kv or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"taint {s!r} is not key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    key, _, value = kv.partition("=")
    t: Obj = {"key": key, "effect": effect}
    if value:
        t["value"] = value
    return t


def build_node(cfg: NodeConfig) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.name,
            "labels": {
                "kubernetes.io/hostname": cfg.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "nvidia.com/gpu.product": cfg.gpu_product,
                "nvidia.com/gpu.count": str(cfg.gpus),
                "nvidia.com/gpu.present": "true" if cfg.gpus else "false",
                PROCESS_NODE_LABEL: "true",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": list(cfg.taints)} if cfg.taints else {},
    }


def build_node_status(cfg: NodeConfig, boot_id: str) -> Obj:
    now = now_rfc3339()

    def cond(t: str, status: str, reason: str, msg: str) -> Obj:
        return {
            "type": t,
            "status": status,
            "reason": reason,
            "message": msg,
            "lastHeartbeatTime": now,
        }

    return {
        "status": {
            "capacity": cfg.resources(),
            "allocatable": cfg.resources(),
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                cond("Ready", "True", "KubeletReady", "accordion process-node agent is posting"),
            ],
            # InternalIP only: the apiserver dials the first address of its preferred types
            # (Hostname first), and node names do not resolve here.
            "addresses": [{"type": "InternalIP", "address": cfg.ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
            "nodeInfo": {
                "machineID": cfg.name,
                "systemUUID": cfg.name,
                "bootID": boot_id,
                "kernelVersion": platform.release(),
                "osImage": "accordion process node (test infrastructure)",
                "containerRuntimeVersion": "process://accordion-nodeagent",
                "kubeletVersion": AGENT_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
    }


def build_lease(name: str, node_uid: str | None) -> Obj:
    meta: Obj = {"name": name, "namespace": "kube-node-lease"}
    if node_uid:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}
        ]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now_micro(),
        },
    }
