"""`accordion-dev`: the developer's local cluster (test infrastructure, not part of the product).

accordion-dev cluster up [--kwok-nodes N] [--gpus-per-node G] [--process-nodes N] [--kueue]
accordion-dev cluster status
accordion-dev cluster down [--purge]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from accordion_dev.cluster import Cluster, ClusterConfig, ClusterError, print_summary


def _cluster_from(args: argparse.Namespace) -> Cluster:
    cfg = ClusterConfig()
    if args.state_dir:
        cfg.state_dir = Path(args.state_dir)
    if args.base_port:
        cfg.base_port = args.base_port
    for attr in (
        "kwok_nodes",
        "gpus_per_node",
        "process_nodes",
        "process_node_gpus",
        "kueue_qps",
        "kueue_burst",
    ):
        if getattr(args, attr, None) is not None:
            setattr(cfg, attr, getattr(args, attr))
    if getattr(args, "no_gpu_taint", False):
        cfg.gpu_taint = False
    cfg.kueue = getattr(args, "kueue", False)
    # The developer's cluster serves the image registry unless told not to (`make images`).
    cfg.registry = not getattr(args, "no_registry", False)
    return Cluster(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="accordion-dev",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", help="cluster state directory (default .accordion/cluster)")
    parser.add_argument("--base-port", type=int, help="first of 9 consecutive ports (16400)")
    groups = parser.add_subparsers(dest="group", required=True)

    cluster = groups.add_parser("cluster", help="local cluster lifecycle")
    verbs = cluster.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="build (cached) and start everything")
    up.add_argument("--kwok-nodes", type=int, help="simulated GPU nodes (default 4)")
    up.add_argument("--gpus-per-node", type=int, help="GPUs per simulated node (default 8)")
    up.add_argument(
        "--no-gpu-taint",
        action="store_true",
        help="do not taint GPU nodes with nvidia.com/gpu=present:NoSchedule",
    )
    up.add_argument("--process-nodes", type=int, help="nodes that really run pods (default 0)")
    up.add_argument("--process-node-gpus", type=int, help="simulated GPUs per process node (1)")
    up.add_argument(
        "--no-registry",
        action="store_true",
        help="do not serve the local image registry (`make images`; built once, ~1 min)",
    )
    up.add_argument(
        "--kueue",
        action="store_true",
        help="run Kueue (pinned, built by e2e/build.sh): CRDs, webhooks, manager for batch/v1 Jobs",
    )
    up.add_argument("--kueue-qps", type=float, help="Kueue's client QPS (default 50, as shipped)")
    up.add_argument("--kueue-burst", type=int, help="Kueue's client burst (default 100)")
    verbs.add_parser("status", help="state of each component; exit 1 if any is down")
    down = verbs.add_parser("down", help="stop everything the cluster started")
    down.add_argument("--purge", action="store_true", help="also delete the state directory")

    demo = groups.add_parser("demo", help="the end-to-end demo (make demo)")
    demo.add_argument("--ci", action="store_true", help="non-interactive, short training")
    fetch = groups.add_parser("fetch", help="download s3://bucket/prefix from the local MinIO")
    fetch.add_argument("uri")
    fetch.add_argument("dest")

    # Process-node commands (stop/start/cordon/drain) live with the node agent.
    if importlib.util.find_spec("accordion_dev.nodecli") is not None:
        from accordion_dev import nodecli

        nodecli.add_parser(groups)

    args = parser.parse_args(argv)
    if args.group == "demo":
        from accordion_dev import demo as demo_mod

        extra = ["--ci"] if args.ci else []
        extra += ["--state-dir", args.state_dir] if args.state_dir else []
        extra += ["--base-port", str(args.base_port)] if args.base_port else []
        return demo_mod.main(extra)
    try:
        if args.group == "fetch":
            from accordion_dev.demo import fetch as fetch_uri

            fetch_uri(args.uri, args.dest, _cluster_from(args))
            return 0
        if args.group == "cluster":
            c = _cluster_from(args)
            if args.verb == "up":
                c.up()
                print_summary(c)
            elif args.verb == "down":
                names = c.down(purge=args.purge)
                print(
                    f"[cluster] stopped {len(names)} processes"
                    if names
                    else "[cluster] nothing was running"
                )
            else:
                rows = c.status()
                if not rows:
                    print(
                        f"no local cluster recorded in {c.state_dir}; start one with "
                        "`make cluster-up`"
                    )
                    return 1
                for name, state, detail in rows:
                    print(f"{name:<28} {state:<10} {detail}")
                return 0 if all(state == "ok" for _, state, _ in rows) else 1
        else:
            return int(args.func(args, _cluster_from(args)))
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
