"""Pod status as kubelet computes it, and its restart policy (pure).

The agent keeps one `Container` record per container; these functions turn the records into
`status.containerStatuses`, the phase and the conditions, and decide restarts with kubelet's
crash-loop back-off: the first restart is immediate, then `base`, 2*base, ... capped at `cap`,
and the count starts over once a container has run for 2*cap without failing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from accordion_dev.nodeagent.kube import rfc3339

Obj = dict[str, Any]


@dataclass
class Terminated:
    exit_code: int
    reason: str  # Completed | Error | OOMKilled | ContainerStatusUnknown
    started_at: float | None
    finished_at: float
    message: str = ""
    signal: int | None = None

    def as_dict(self, container_id: str = "") -> Obj:
        d: Obj = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "finishedAt": rfc3339(self.finished_at),
            "startedAt": rfc3339(self.started_at) if self.started_at else None,
        }
        if self.message:
            d["message"] = self.message
        if self.signal:
            d["signal"] = self.signal
        if container_id:
            d["containerID"] = container_id
        return d


@dataclass
class Container:
    name: str
    init: bool = False
    #: waiting | running | terminated
    state: str = "waiting"
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    started_at: float | None = None
    terminated: Terminated | None = None
    last: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    backoff_until: float | None = None
    container_id: str = ""

    def status(self, image: str) -> Obj:
        """One `containerStatuses` entry. Unused state keys are null so that a strategic merge
        patch replaces the previous state instead of merging two of them."""
        state: Obj = {"waiting": None, "running": None, "terminated": None}
        if self.state == "running":
            state["running"] = {"startedAt": rfc3339(self.started_at or 0)}
        elif self.state == "terminated" and self.terminated:
            state["terminated"] = self.terminated.as_dict(self.container_id)
        else:
            w: Obj = {"reason": self.waiting_reason}
            if self.waiting_message:
                w["message"] = self.waiting_message
            state["waiting"] = w
        last: Obj = {"waiting": None, "running": None, "terminated": None}
        if self.last:
            last["terminated"] = self.last.as_dict()
        out: Obj = {
            "name": self.name,
            "image": image,
            "imageID": "",
            "state": state,
            "lastState": last if self.last else {},
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.state == "running",
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def exit_reason(returncode: int, oom: bool = False) -> tuple[int, str, int | None]:
    """(exitCode, reason, signal) from a Popen returncode (negative = killed by a signal)."""
    if oom:
        return 137, "OOMKilled", 9
    if returncode < 0:
        return 128 - returncode, "Error", -returncode
    return returncode, "Completed" if returncode == 0 else "Error", None


def backoff_delay(restarts: int, base: float, cap: float) -> float:
    """Seconds before restart number `restarts + 1` (kubelet: 0, base, 2*base, ... <= cap)."""
    if restarts <= 0:
        return 0.0
    return float(min(base * 2 ** (restarts - 1), cap))


def decide_restart(policy: str, exit_code: int, init: bool) -> bool:
    """Whether a terminated container is started again under the pod's restartPolicy. Init
    containers never restart after success; under Always they restart on failure."""
    if init:
        return exit_code != 0 and policy in ("Always", "OnFailure")
    if policy == "Always":
        return True
    return policy == "OnFailure" and exit_code != 0


def compute_phase(policy: str, inits: Sequence[Container], apps: Sequence[Container]) -> str:
    """kubelet's getPhase, for a pod whose sandbox exists."""
    for c in inits:
        done = c.state == "terminated" and c.terminated is not None
        if done and c.terminated and c.terminated.exit_code != 0 and policy == "Never":
            return "Failed"
    if not all(
        c.state == "terminated" and c.terminated and c.terminated.exit_code == 0 for c in inits
    ):
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for c in apps:
        if c.state == "running":
            running += 1
        elif c.state == "terminated" and c.terminated:
            stopped += 1
            succeeded += c.terminated.exit_code == 0
        elif c.last is not None:  # waiting to restart (back-off)
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if policy == "OnFailure":
        return "Running"
    return "Failed"


def _cond(
    ctype: str, ok: bool, prev: Mapping[str, Obj], now: float, reason: str = "", message: str = ""
) -> Obj:
    status = "True" if ok else "False"
    old = prev.get(ctype)
    if old is None or old.get("status") != status:
        transition = rfc3339(now)
    else:
        transition = old["lastTransitionTime"]
    c: Obj = {
        "type": ctype,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": transition,
        "reason": None if ok else (reason or None),
        "message": None if ok else (message or None),
    }
    return c


def compute_conditions(
    phase: str,
    sandbox_ready: bool,
    inits: Sequence[Container],
    apps: Sequence[Container],
    prev_conditions: Iterable[Obj],
    now: float,
) -> list[Obj]:
    """The four kubelet-owned conditions (plus PodReadyToStartContainers); PodScheduled and
    others (DisruptionTarget) belong to other writers and are left to the strategic merge."""
    prev = {c["type"]: c for c in prev_conditions}
    terminal = phase in ("Succeeded", "Failed")
    pending_inits = [
        c.name
        for c in inits
        if not (c.state == "terminated" and c.terminated and c.terminated.exit_code == 0)
    ]
    initialized = not pending_inits or (terminal and phase == "Succeeded")
    unready = [c.name for c in apps if not c.ready]
    ready = not unready and not terminal
    if terminal:
        why, msg = "PodCompleted", ""
    elif pending_inits:
        why, msg = "ContainersNotInitialized", f"containers with incomplete status: {pending_inits}"
    else:
        why, msg = "ContainersNotReady", f"containers with unready status: {unready}"
    return [
        _cond("PodReadyToStartContainers", sandbox_ready and not terminal, prev, now),
        _cond(
            "Initialized",
            initialized,
            prev,
            now,
            "ContainersNotInitialized",
            f"containers with incomplete status: {pending_inits}",
        ),
        _cond("ContainersReady", ready, prev, now, why, msg),
        _cond("Ready", ready, prev, now, why, msg),
    ]


@dataclass
class PodStatusInput:
    phase: str
    pod_ip: str
    host_ip: str
    start_time: float
    conditions: list[Obj]
    inits: Sequence[Container]
    apps: Sequence[Container]
    images: Mapping[str, str] = field(default_factory=dict)
    message: str = ""
    reason: str = ""


def build_status(s: PodStatusInput) -> Obj:
    """The status body the agent patches (strategic merge) onto the pod."""
    body: Obj = {
        "phase": s.phase,
        "conditions": s.conditions,
        "startTime": rfc3339(s.start_time),
        "hostIP": s.host_ip,
        "hostIPs": [{"ip": s.host_ip}],
        "initContainerStatuses": [c.status(s.images.get(c.name, "")) for c in s.inits],
        "containerStatuses": [c.status(s.images.get(c.name, "")) for c in s.apps],
        "message": s.message or None,
        "reason": s.reason or None,
    }
    if s.pod_ip:
        body["podIP"] = s.pod_ip
        body["podIPs"] = [{"ip": s.pod_ip}]
    return body
