"""`python -m accordion_trainer.horovod_run ARGS`: horovodrun with a faster host-discovery poll.

Horovod's elastic driver polls the discovery script once a second (a module constant, not an
option); every host change waits for that poll before workers are told. Polling `cat hosts` is
cheap, so poll every `ACCORDION_DISCOVERY_POLL_S` (default 0.25 s) instead.
"""

from __future__ import annotations

import os


def main() -> None:
    import horovod.runner.elastic.driver as driver
    from horovod.runner.launch import run_commandline

    driver.DISCOVER_HOSTS_FREQUENCY_SECS = float(
        os.environ.get("ACCORDION_DISCOVERY_POLL_S", "0.25")
    )
    raise SystemExit(run_commandline())


if __name__ == "__main__":
    main()
