"""Host changes that Horovod 0.28.1's elastic mode loses, and the two patches that keep them.

The driver (horovodrun) tells rank 0 of a host change; rank 0 makes every rank reset at the next
commit. A change is lost at two points while the first processes start (or restart after a
launcher restart):

- the driver drops it while rank 0 has not yet registered its notification server
  (`ElasticDriver._notify_workers_host_changes`: "no coordinator client, skipping
  notifications");
- rank 0's notification manager drops it while no `State` listens yet: registering the server
  (inside `hvd.elastic.run`) is what makes the driver send, and the state is registered as a
  listener only after that call returns (`horovod.common.elastic.run_fn`).

A worker pod that turned Ready in that window stayed out of the world until some other host
changed: the run trained short of a worker that held its GPUs, and the operator replaced the
pod after its grace period (`WorkerLeftWorld`). `notify_missed_updates_on_registration` (in
horovodrun) sends rank 0, when it registers, the change between what the driver discovered and
what it assigned; `keep_updates_until_listened` (in each training process) keeps an update that
arrives before the state listens and hands it to the state when it does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any


def missed_update(assigned: Iterable[str], available: Iterable[str]) -> int:
    """The `HostUpdateResult` flags between the hosts the driver assigned ranks to and the hosts
    it discovered since (0 when they agree)."""
    from horovod.runner.elastic.worker import HostUpdateResult

    before, now = set(assigned), set(available)
    update = HostUpdateResult.no_update
    if now - before:
        update |= HostUpdateResult.added
    if before - now:
        update |= HostUpdateResult.removed
    return int(update)


def notify_missed_updates_on_registration(driver_cls: Any) -> None:
    """Patch `driver_cls.register_worker_server` to send the coordinator, once it registers, the
    host change the driver found while it could not tell anyone. The driver's own check (the
    change must alter the rank assignments, as `--max-np` may not) still decides whether a
    notification goes out."""
    register = driver_cls.register_worker_server

    def register_worker_server(
        self: Any, host: str, slot: int, addresses: Any, secret_key: Any
    ) -> None:
        register(self, host, slot, addresses, secret_key)
        coordinator = self.get_coordinator_info()
        if coordinator is None or (coordinator.hostname, coordinator.local_rank) != (host, slot):
            return
        with self._wait_hosts_cond:  # the discovery thread's lock around the same call
            current = self._host_manager.current_hosts
            update = missed_update(self.host_assignments, current.available_hosts)
            if update:
                self._notify_workers_host_changes(current, update)

    driver_cls.register_worker_server = register_worker_server


def keep_updates_until_listened(manager: Any) -> None:
    """Patch a `WorkerNotificationManager` (instance) so that host updates arriving while no
    listener is registered are kept and handed to the next listener that registers. At worst
    that is one reset more than needed (an update that the new state's first sync already
    covered), where dropping it costs a worker for good."""
    lock = threading.Lock()
    kept: list[tuple[float, int]] = []
    handle, register = manager.handle_hosts_updated, manager.register_listener

    def handle_hosts_updated(timestamp: float, update_res: int) -> None:
        with lock:
            if not manager._listeners:
                kept.append((timestamp, update_res))
                return
        handle(timestamp, update_res)

    def register_listener(listener: Any) -> None:
        with lock:
            register(listener)
            replay = kept[:]
            kept.clear()
        for timestamp, update_res in replay:
            listener.on_hosts_updated(timestamp, update_res)

    manager.handle_hosts_updated = handle_hosts_updated
    manager.register_listener = register_listener
