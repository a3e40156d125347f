"""Pod IP and GPU allocation (pure: the agent persists the assignments in its state file).

Every pod of node `i` gets an address in 127.<100+i>.0.0/16 (all of 127/8 reaches the loopback
interface on Linux, so any pod can bind its own address without configuration); 127.<100+i>.0.1
is the node's own InternalIP. Simulated GPUs are ids 0..N-1, each held by at most one pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GPU = "nvidia.com/gpu"
#: hosts per node: 127.X.0.2 .. 127.X.255.254 minus network/broadcast-like .0/.255 endings
_FIRST_HOST = 2


class AllocationError(RuntimeError):
    pass


def node_ip(index: int) -> str:
    return f"127.{100 + index}.0.1"


def _pod_ip(index: int, n: int) -> str:
    return f"127.{100 + index}.{n // 253}.{n % 253 + _FIRST_HOST}"


@dataclass
class IpAllocator:
    """Hands out addresses in order (not lowest-free) so a freed address is reused late: a
    client still connected to a deleted pod must not reach its successor."""

    node_index: int
    assigned: dict[str, str] = field(default_factory=dict)  # pod uid -> ip
    cursor: int = 0
    size: int = 256 * 253

    def allocate(self, uid: str) -> str:
        if uid in self.assigned:
            return self.assigned[uid]
        used = set(self.assigned.values())
        for step in range(self.size):
            n = (self.cursor + step) % self.size
            ip = _pod_ip(self.node_index, n)
            if ip not in used:
                self.cursor = (n + 1) % self.size
                self.assigned[uid] = ip
                return ip
        raise AllocationError(f"no free pod IP on node index {self.node_index}")

    def release(self, uid: str) -> None:
        self.assigned.pop(uid, None)


def gpu_request(container: Mapping[str, Any]) -> int:
    """GPUs a container asks for: extended resources have limits == requests (limit wins)."""
    res = container.get("resources") or {}
    raw = (res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0
    return int(raw)


def pod_gpu_plan(spec: Mapping[str, Any]) -> tuple[int, dict[str, int]]:
    """(GPUs the pod holds, per-container count) as the device manager computes it: app
    containers get disjoint devices, init containers reuse the pod's (they run one at a time)."""
    per: dict[str, int] = {}
    app = 0
    for c in spec.get("containers", []):
        per[c["name"]] = gpu_request(c)
        app += per[c["name"]]
    init = 0
    for c in spec.get("initContainers") or []:
        per[c["name"]] = gpu_request(c)
        init = max(init, per[c["name"]])
    return max(app, init), per


@dataclass
class GpuAllocator:
    count: int
    assigned: dict[str, list[int]] = field(default_factory=dict)  # pod uid -> device ids

    def free(self) -> list[int]:
        used = {d for ids in self.assigned.values() for d in ids}
        return [d for d in range(self.count) if d not in used]

    def allocate(self, uid: str, n: int) -> list[int]:
        if uid in self.assigned:
            return self.assigned[uid]
        free = self.free()
        if n > len(free):
            raise AllocationError(
                f"pod needs {n} nvidia.com/gpu, {len(free)} of {self.count} free on this node"
            )
        self.assigned[uid] = free[:n]
        return self.assigned[uid]

    def release(self, uid: str) -> None:
        self.assigned.pop(uid, None)


def split_devices(
    devices: list[int], spec: Mapping[str, Any], per: Mapping[str, int]
) -> dict[str, list[int]]:
    """Each app container its own slice of the pod's devices; init containers the first ones."""
    out: dict[str, list[int]] = {}
    at = 0
    for c in spec.get("containers", []):
        n = per.get(c["name"], 0)
        out[c["name"]] = devices[at : at + n]
        at += n
    for c in spec.get("initContainers") or []:
        out[c["name"]] = devices[: per.get(c["name"], 0)]
    return out


def visible_devices(ids: Iterable[int]) -> str:
    """CUDA_VISIBLE_DEVICES value; empty means no GPU, as with the NVIDIA runtime's `void`."""
    return ",".join(str(i) for i in ids)
