"""The local image registry: distribution's `registry` (built by `e2e/build.sh registry` from the
pinned Go module) serving `$ACCORDION_CACHE/images/registry` on 127.0.0.1.

The storage is shared by every registry process of this machine: `make images`
(`images/build-images.sh`) pushes through a private instance of its own, and each local cluster
started with a registry (`accordion-dev cluster up`) serves the same directory, so a cluster
started later, or a test cluster on other ports, serves the images already built. distribution
writes blobs and manifests content-addressed and links tags atomically, so several instances
on one filesystem root are safe (it is how replicas share one bucket); nothing is cached in
memory (no `cache:` section), so an image pushed through one instance is served by all at once.

Plain HTTP on loopback, no authentication: process nodes and skopeo/buildah reach it with
`--tls-verify=false`. Stdlib only: `images/build-images.sh` runs it with any Python 3.

    python -m accordion_dev.registry config ROOT ADDRESS    # print a configuration
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

#: where the cluster looks for a free port for its registry: below the clusters' port blocks
#: (16400 and up for the developer's, 20000+ for tests) and below the ephemeral range
PORT_RANGE = (15000, 16400)


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "accordion"
    return Path(os.environ.get("ACCORDION_CACHE", default))


def storage_root() -> Path:
    return cache_dir() / "images" / "registry"


def config(root: Path, address: str) -> dict[str, Any]:
    """distribution's configuration (YAML; JSON is YAML)."""
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            # another instance's upload in progress must not be purged by this one
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": address, "secret": "accordion-local-registry"},
        "health": {"storagedriver": {"enabled": False}},
    }


def free_port(first: int = PORT_RANGE[0], last: int = PORT_RANGE[1]) -> int:
    for port in range(first, last):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port for the registry in {first}..{last - 1}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "config":
        print("usage: python -m accordion_dev.registry config ROOT ADDRESS", file=sys.stderr)
        return 2
    print(json.dumps(config(Path(argv[1]), argv[2]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
