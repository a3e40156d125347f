"""`python -m accordion_trainer.horovod_run ARGS`: horovodrun with a faster host discovery.

Horovod's elastic driver runs the discovery script once a second (a module constant, not an
option), each time through `safe_shell_exec` (a forked middleman, a shell and `cat`); every
host change waits for that poll before workers are told. Our discovery script only prints the
hosts file that the launcher (or a standalone run) keeps, so with `ACCORDION_HOSTS_FILE` set the
driver reads that file itself, without a process, every `ACCORDION_DISCOVERY_POLL_S` (default
0.05 s; without the file: the script, every 0.25 s).

It also keeps the host changes that the driver would lose (`hostupdates`), ranks hosts found
together in the discovery's order (`rank_in_discovery_order`), and with
`ACCORDION_SSH_EVERY_HOST` set reaches every host over ssh (`ssh_every_host`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .hostupdates import notify_missed_updates_on_registration

#: the hosts file the discovery script prints (`addr:slots` lines), read directly instead
HOSTS_FILE_ENV = "ACCORDION_HOSTS_FILE"
#: set by a launcher whose pod hosts worker 0 (incluster.start_hosted_worker)
SSH_EVERY_HOST_ENV = "ACCORDION_SSH_EVERY_HOST"


def ssh_every_host() -> None:
    """Horovod's gloo launcher starts the processes of a host whose address is one of this
    machine's as its own children, with its own environment, and uses ssh only for the others.
    A launcher whose pod hosts worker 0 has that pod's address: its slots must go through the
    pod's sshd like every worker's, whose session hands the training processes what horovodrun
    must not carry (the stores' keys, the pod's GPU ids, the warm processes, the pod's name).
    So gloo_run, and only it, sees no local address."""
    import types

    import horovod.runner.gloo_run as gloo_run

    network = types.SimpleNamespace(**vars(gloo_run.network))
    network.get_local_host_addresses = set
    gloo_run.network = network


def ordered_hosts(available: set[str], previous: list[str], discovered: list[str]) -> list[str]:
    """Horovod's rank order of `available` hosts (pure): the hosts of `previous` first, as they
    were (an older host keeps a lower rank), then the new ones in `discovered` order."""
    kept = [h for h in previous if h in available]
    position = {h: i for i, h in enumerate(discovered)}
    new = sorted(available.difference(kept), key=lambda h: (position.get(h, len(position)), h))
    return kept + new


def rank_in_discovery_order() -> None:
    """Horovod appends the hosts that one discovery newly found to its rank order by iterating
    a set, in an order that changes with each process's string hashing: hosts found together
    take ranks at random. Our discovery lists hosts in worker-index order, with a launcher that
    hosts worker 0 first, so that pod (which a shrink never takes) holds rank 0
    (incluster.led_by); `ordered_hosts` keeps that order."""
    from horovod.runner.elastic import discovery

    discovered: list[str] = []

    def find_in_order(self: discovery.HostDiscoveryScript) -> dict[str, int]:
        # Horovod's own parser, but over the lines in order (it makes a set of them too)
        slots: dict[str, int] = {}
        for line in self._execute_discovery_script().strip().split("\n"):
            host, _, count = line.partition(":")
            if host:
                slots.setdefault(host, int(count) if count else self._default_slots)
        discovered[:] = list(slots)
        return slots

    def order(available: set[str], previous: list[str]) -> list[str]:
        return ordered_hosts(available, previous, discovered)

    discovery.HostDiscoveryScript.find_available_hosts_and_slots = find_in_order
    discovery.HostManager.order_available_hosts = staticmethod(order)


def read_hosts_file(path: Path) -> str:
    """What the discovery script would print: the file, or nothing while it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def main() -> None:
    import horovod.runner.elastic.driver as driver
    from horovod.runner.elastic.discovery import HostDiscoveryScript
    from horovod.runner.launch import run_commandline

    hosts_file = os.environ.get(HOSTS_FILE_ENV)
    poll = "0.25"
    if hosts_file:
        path = Path(hosts_file)
        HostDiscoveryScript._execute_discovery_script = lambda _self: read_hosts_file(path)
        poll = "0.05"
    driver.DISCOVER_HOSTS_FREQUENCY_SECS = float(os.environ.get("ACCORDION_DISCOVERY_POLL_S", poll))
    rank_in_discovery_order()
    if os.environ.get(SSH_EVERY_HOST_ENV):
        ssh_every_host()
    notify_missed_updates_on_registration(driver.ElasticDriver)
    raise SystemExit(run_commandline())


if __name__ == "__main__":
    main()
