"""Several GPUs per worker pod: one Horovod slot per GPU, each process pinned to its own GPU.

A worker pod with N GPUs is one host with N slots (docs/contract.md). The worker finds which
ids name its GPUs (`pod_gpu_ids`) and hands them to its training processes as
`ACCORDION_POD_GPUS`, through sshd's SetEnv: a process started over ssh inherits nothing from
the pod's own environment, and horovodrun never forwards `CUDA_VISIBLE_DEVICES`. Each training
process then keeps only the id at its local rank (`process_gpu_env`), before TensorFlow
initialises: CUDA reads `CUDA_VISIBLE_DEVICES` once, when TensorFlow first touches it, and
`TF_FORCE_GPU_ALLOW_GROWTH` decides how the first allocation is sized.

Pure functions of the environment, no TensorFlow: `pin_process` applies them to this process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from .errors import Reason, TrainerError

#: the worker's GPU ids, comma-separated (empty: a pod without GPUs), set by the worker only
POD_GPUS_ENV = "ACCORDION_POD_GPUS"
#: the run's `workers.gpusPerWorker`, set by the operator on both pods
GPUS_PER_WORKER_ENV = "ACCORDION_GPUS_PER_WORKER"
#: what the NVIDIA container runtime puts there for a container without GPUs
NO_DEVICES = ("", "void", "none")


def gpus_per_worker(env: Mapping[str, str]) -> int:
    raw = env.get(GPUS_PER_WORKER_ENV) or "0"
    try:
        return max(0, int(raw))
    except ValueError as e:
        raise TrainerError(Reason.TrainingError, f"{GPUS_PER_WORKER_ENV}={raw!r}") from e


def slots_per_worker(env: Mapping[str, str]) -> int:
    """Horovod slots per worker pod: one per GPU; a pod without GPUs trains in one process."""
    return max(1, gpus_per_worker(env))


def _ids(raw: str) -> list[str]:
    return [d.strip() for d in raw.split(",") if d.strip()]


def pod_gpu_ids(env: Mapping[str, str]) -> list[str]:
    """The values of `CUDA_VISIBLE_DEVICES` that name this pod's GPUs, one per GPU.

    - `CUDA_VISIBLE_DEVICES` set in the pod (process nodes' simulated ids, runtimes that set
      it): those ids, as CUDA in this container knows them;
    - else GPU/MIG UUIDs in `NVIDIA_VISIBLE_DEVICES` (the NVIDIA device plugin's default):
      the UUIDs, which CUDA accepts as they are;
    - else (host indices, `all`, a device-list path): the runtime numbers the container's
      devices from 0, so 0..N-1 with N the pod's GPU count."""
    count = gpus_per_worker(env)
    if count == 0:
        return []
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None:
        return _ids(cuda)
    nvidia = _ids(env.get("NVIDIA_VISIBLE_DEVICES", ""))
    if nvidia and all(d.startswith(("GPU-", "MIG-")) for d in nvidia):
        return nvidia
    return [str(i) for i in range(count)]


def process_gpu_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that pin one training process to its GPU, from its environment.

    Empty outside a worker pod (no `ACCORDION_POD_GPUS`: standalone runs use the machine as it
    is). A pod without GPUs hides every device (`CUDA_VISIBLE_DEVICES=""`): a runtime that
    exposes the node's GPUs to every container would otherwise let it use another pod's."""
    raw = env.get(POD_GPUS_ENV)
    if raw is None:
        return {}
    ids = _ids(raw)
    if not ids:
        return {"CUDA_VISIBLE_DEVICES": ""}
    local_rank = int(env.get("HOROVOD_LOCAL_RANK", "0"))
    if local_rank >= len(ids):
        raise TrainerError(
            Reason.TrainingError,
            f"local rank {local_rank} but the pod has {len(ids)} GPU(s) ({raw}): "
            f"more Horovod slots than GPUs on this host",
        )
    return {"CUDA_VISIBLE_DEVICES": ids[local_rank], "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def pin_process(env: MutableMapping[str, str] | None = None) -> str | None:
    """Pin this training process (call before TensorFlow is imported); returns its GPU id,
    `""` for none, None when not in a worker pod. Logs one line that says which."""
    env = os.environ if env is None else env
    pinned = process_gpu_env(env)
    env.update(pinned)
    gpu = pinned.get("CUDA_VISIBLE_DEVICES")
    if gpu is not None:
        print(
            f"[trainer] rank {env.get('HOROVOD_RANK', '0')} "
            f"local_rank {env.get('HOROVOD_LOCAL_RANK', '0')} "
            f"pod {env.get('ACCORDION_POD_NAME', '')} gpu {gpu or 'none'}",
            flush=True,
        )
    return gpu
