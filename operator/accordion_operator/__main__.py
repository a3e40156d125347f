"""`python -m accordion_operator`: run the Accordion operator (kopf) with our settings.

    python -m accordion_operator                       # cluster-wide
    python -m accordion_operator --namespace team-a    # only these namespaces (repeatable)
    python -m accordion_operator --help-config         # the ACCORDION_* settings table

Settings come from ACCORDION_* environment variables (accordion_operator.config); the
kubeconfig from $KUBECONFIG or the in-cluster service account.
"""

from __future__ import annotations

import argparse
import logging
import os

from accordion_operator.config import Config, describe, env_name, http_host


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m accordion_operator")
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: cluster-wide",
    )
    parser.add_argument("--help-config", action="store_true", help="print the settings table")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.help_config:
        print("| variable | default | meaning |\n|---|---|---|")
        for name, default, doc in describe():
            print(f"| `{name}` | `{default}` | {doc} |")
        return
    if args.namespace:
        os.environ[env_name("namespaces")] = ",".join(args.namespace)
    try:
        cfg = Config.from_env()
        address = cfg.listen_address()
    except ValueError as e:
        parser.error(str(e))

    import kopf

    import accordion_operator.handlers  # registers the handlers

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(logging, cfg.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # one line per request / per watch event is noise at 10,000 runs
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not cfg.namespaces,
        namespaces=list(cfg.namespaces),
        standalone=True,
        liveness_endpoint=f"http://{http_host(address)}:{cfg.health_port}/healthz",
    )
    del accordion_operator.handlers


if __name__ == "__main__":
    main()
