"""Process nodes: a node agent that runs the pods bound to its node as local processes.

**Test infrastructure, not part of the product.** There is no container runtime and no GPU on
the development and CI machines, so this agent stands in for kubelet + container runtime. The
apiserver, scheduler, controllers (node lifecycle, taint eviction, garbage collection) and the
Accordion operator above it are the real thing; only "run this container" is simulated.

One agent process per node::

    python -m accordion_dev.nodeagent --kubeconfig K --node proc-0 --gpus 2 \\
        --gpu-product NVIDIA-H100-80GB-HBM3 --cpu 16 --memory 64Gi --pod-cidr-index 0 \\
        [--taint nvidia.com/gpu=present:NoSchedule] --state-dir DIR

What a pod gets
- Node: capacity/allocatable cpu, memory, pods, `nvidia.com/gpu`; labels
  `nvidia.com/gpu.product`, `nvidia.com/gpu.count`, `kubernetes.io/hostname`,
  `accordion.dev/process-node=true`; a Ready condition and a Lease in kube-node-lease renewed
  every `--heartbeat-seconds` (10); InternalIP 127.<100+index>.0.1.
- Pod IP: 127.<100+index>.x.y, unique among live pods of the node, in `status.podIP` and in the
  env var `POD_IP`; pods must bind it (all of 127/8 is loopback, so two pods can use one port).
- GPUs: simulated device ids 0..N-1, exclusive per pod (persisted in the state dir across agent
  restarts), in `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES`.
- Processes: `command` + `args` (the image is ignored: the command runs in this machine's
  environment with `<repo>/.venv/bin` first on PATH), `workingDir`, env with `valueFrom`
  (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef) and envFrom;
  `KUBERNETES_SERVICE_HOST=127.0.0.1` and `KUBERNETES_SERVICE_PORT=<apiserver port>` so
  in-cluster clients reach the real apiserver.
- Volumes (path mapping): emptyDir, secret, configMap, downwardAPI and projected volumes
  (serviceAccountToken via the TokenRequest API, kube-root-ca.crt) are written to
  `<state-dir>/pods/<ns>_<pod>_<uid>/volumes/<volume>/`; hostPath is the host path. Each
  container runs in its own mount namespace (`unshare --mount`, the agent runs as root) where
  these directories are bind-mounted at the real mountPaths (subPath and readOnly honoured), so a
  pod sees `/etc/accordion/ssh` and `/var/run/secrets/kubernetes.io/serviceaccount` as on a
  real node. Mount points that do not exist on the host are created there (empty). The
  `terminationMessagePath` (default /dev/termination-log) is bind-mounted from
  `<pod-dir>/termination/<container>`; its content becomes `state.terminated.message`
  (FallbackToLogsOnError: the log tail). Not root: no isolation, and the env var
  ACCORDION_VOLUME_MAP (JSON mountPath -> host dir) says where the volumes are.
- Status as kubelet reports it: phase, conditions, container statuses (running/terminated with
  exitCode, reason Completed/Error, timestamps, restartCount, lastState), init containers in
  order, restartPolicy with crash-loop back-off (0, base, 2*base, ... capped at 30*base;
  `--backoff-base` 10 s like kubelet), readiness and liveness from exec/tcpSocket/httpGet probes.
- Memory: a container with limits.memory runs in a memory cgroup with that limit (cgroup v1
  here); when the kernel OOM-kills it the status says OOMKilled (exit code 137). CPU limits
  and GPU memory are not enforced.
- Deletion: SIGTERM to the main process, SIGKILL to all of the container's processes (its
  cgroup) after deletionGracePeriodSeconds, then the pod is deleted with grace period 0.
- No orphans: on SIGTERM the agent kills every container; containers carry
  `setpriv --pdeathsig KILL`, and a (re)starting agent kills whatever its node's cgroups and
  recorded pids still hold.
- Logs: `<state-dir>/pods/<ns>_<pod>_<uid>/<container>.log` (restarts append), read with
  `kubectl logs` (a kubelet-compatible endpoint on <node IP>:10250, see logserver.py) or
  `accordion-dev node logs POD [-n NS] [-c CONTAINER] [-f]`.
- Node index: the agent claims its index machine-wide by binding that endpoint; if another
  cluster's node holds it, the agent takes the next free one (so clusters never share pod IPs).

Images (`images.py`): a container whose image is in a registry named by `--image-registry`
(the local cluster's, `<address>/<repository>[:tag|@digest]`), or of a pod annotated
`accordion.dev/run-image: "true"`, runs from that image instead of the checkout. The image is
pulled once per digest (skopeo copy to an OCI layout, umoci unpack; a machine-wide cache under
`$ACCORDION_CACHE/images/rootfs`, shared by the nodes) and each container gets an overlay of
its root filesystem (a fresh writable layer per container instance) in its own mount namespace,
with /proc, /sys, a minimal /dev, the volumes at their mountPaths, and its command (image
ENTRYPOINT/CMD with Kubernetes' command/args rules), env (image's, then the pod's), user
(runAsUser/runAsGroup, else the image's USER; fsGroup and supplementalGroups as supplementary
groups and volume ownership; runAsNonRoot checked), workingDir (else the image's) and
readOnlyRootFilesystem. A failed pull is `ErrImagePull`, then `ImagePullBackOff` while it backs
off (10 s doubling to 5 min, like kubelet). Every other pod runs from the checkout as below.

Not supported: images other than as above, lifecycle hooks (postStart/preStop), startup probes
(containers count as started at once), `kubectl exec/port-forward`, previous-instance logs,
persistentVolumeClaim volumes, service-account token refresh (tokens last their
expirationSeconds; the default projected token is extended to a year by the apiserver).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TypedDict, Unpack

DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


class AgentOptions(TypedDict, total=False):
    """The optional keyword arguments of `agent_argv`, which `start_agent` passes on."""

    gpu_product: str
    cpu: str
    memory: str
    taints: list[str] | None
    heartbeat_seconds: float | None
    backoff_base: float | None
    image_registries: list[str] | None
    host_cpus: str | None


def host_cpu_set(cpus: str) -> set[int]:
    """The host CPUs a `taskset -c` list ("0", "0,2", "1-3") names. Raises ValueError, naming
    the CPUs this process may run on, for a malformed list or a CPU it may not use (taskset
    would fail, and the node would never turn Ready)."""
    have = os.sched_getaffinity(0)
    usable = ",".join(map(str, sorted(have)))
    out: set[int] = set()
    try:
        for part in cpus.split(","):
            lo, dash, hi = part.strip().partition("-")
            out |= set(range(int(lo), int(hi if dash else lo) + 1))
    except ValueError:
        raise ValueError(f"host CPUs {cpus!r}: not a CPU list like 0 or 0,2 or 1-3") from None
    if not out or not out <= have:
        raise ValueError(f"host CPUs {cpus!r}: usable CPUs here are {usable}")
    return out


def agent_argv(
    kubeconfig: Path,
    name: str,
    gpus: int,
    state_dir: Path,
    index: int,
    *,
    gpu_product: str = DEFAULT_GPU_PRODUCT,
    cpu: str = "16",
    memory: str = "64Gi",
    taints: list[str] | None = None,
    heartbeat_seconds: float | None = None,
    backoff_base: float | None = None,
    image_registries: list[str] | None = None,
    host_cpus: str | None = None,
) -> list[str]:
    """`host_cpus` (a `taskset -c` list) pins the agent and so every process of its pods (they
    inherit its CPU affinity, and so do those their sshd starts) to those host CPUs: a node
    with cores of its own, as a real node has, instead of every node sharing all of them."""
    pin = (
        ["taskset", "-c", ",".join(map(str, sorted(host_cpu_set(host_cpus))))] if host_cpus else []
    )
    argv = [
        *pin,
        sys.executable,
        "-m",
        "accordion_dev.nodeagent",
        "--kubeconfig",
        str(kubeconfig),
        "--node",
        name,
        "--gpus",
        str(gpus),
        "--gpu-product",
        gpu_product,
        "--cpu",
        cpu,
        "--memory",
        memory,
        "--pod-cidr-index",
        str(index),
        "--state-dir",
        str(state_dir),
    ]
    for t in taints or []:
        argv += ["--taint", t]
    if heartbeat_seconds is not None:
        argv += ["--heartbeat-seconds", str(heartbeat_seconds)]
    if backoff_base is not None:
        argv += ["--backoff-base", str(backoff_base)]
    for r in image_registries or []:
        argv += ["--image-registry", r]
    return argv


def start_agent(
    kubeconfig: Path,
    name: str,
    gpus: int,
    state_dir: Path,
    index: int,
    *,
    log_file: Path | None = None,
    **options: Unpack[AgentOptions],
) -> subprocess.Popen[bytes]:
    """Start one node agent in its own session with its own log file (default
    `<state_dir>/agent.log`); the caller records the pid (`cluster down` SIGTERMs it)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    log = Path(log_file) if log_file else state_dir / "agent.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = agent_argv(Path(kubeconfig), name, gpus, state_dir, index, **options)
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
