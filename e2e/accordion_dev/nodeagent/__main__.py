"""`python -m accordion_dev.nodeagent`: one process node (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from accordion_dev.nodeagent import DEFAULT_GPU_PRODUCT
from accordion_dev.nodeagent.agent import AgentConfig, main_loop
from accordion_dev.nodeagent.node import NodeConfig, parse_taint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m accordion_dev.nodeagent", description=__doc__)
    p.add_argument("--kubeconfig", required=True, type=Path)
    p.add_argument("--node", required=True, help="node name")
    p.add_argument("--gpus", type=int, default=1, help="simulated nvidia.com/gpu devices")
    p.add_argument("--gpu-product", default=DEFAULT_GPU_PRODUCT)
    p.add_argument("--cpu", default="16")
    p.add_argument("--memory", default="64Gi")
    p.add_argument("--pods", type=int, default=110)
    p.add_argument(
        "--pod-cidr-index",
        type=int,
        required=True,
        help="node index I: node IP 127.<100+I>.0.1, pod IPs in 127.<100+I>.0.0/16",
    )
    p.add_argument("--taint", action="append", default=[], help="key[=value]:Effect")
    p.add_argument("--state-dir", required=True, type=Path)
    p.add_argument("--heartbeat-seconds", type=float, default=10.0)
    p.add_argument("--kubelet-port", type=int, default=10250, help="log endpoint (kubectl logs)")
    p.add_argument(
        "--backoff-base",
        type=float,
        default=10.0,
        help="crash-loop back-off base in seconds (cap: 30x)",
    )
    p.add_argument(
        "--image-registry",
        action="append",
        default=[],
        help="host:port of a registry whose images this node runs (plain HTTP; repeatable)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {a.node} %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    node = NodeConfig(
        name=a.node,
        index=a.pod_cidr_index,
        gpus=a.gpus,
        gpu_product=a.gpu_product,
        cpu=a.cpu,
        memory=a.memory,
        pods=a.pods,
        taints=tuple(parse_taint(t) for t in a.taint),
        kubelet_port=a.kubelet_port,
    )
    cfg = AgentConfig(
        kubeconfig=a.kubeconfig,
        node=node,
        state_dir=a.state_dir,
        heartbeat_seconds=a.heartbeat_seconds,
        backoff_base=a.backoff_base,
        backoff_cap=30 * a.backoff_base,
        image_registries=tuple(a.image_registry),
    )
    return main_loop(cfg)


if __name__ == "__main__":
    sys.exit(main())
