"""The patches that keep Horovod's host changes (accordion_trainer.hostupdates), against Horovod's
own elastic driver, notification service, client and manager: no processes, no cluster."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from horovod.runner.common.util import secret
from horovod.runner.elastic import driver as horovod_driver
from horovod.runner.elastic.discovery import HostDiscovery
from horovod.runner.elastic.worker import (
    HostUpdateResult,
    WorkerNotificationManager,
    WorkerNotificationService,
)

from accordion_trainer.hostupdates import (
    keep_updates_until_listened,
    missed_update,
    notify_missed_updates_on_registration,
)


@pytest.mark.parametrize(
    ("assigned", "available", "expected"),
    [
        (["a"], ["a"], HostUpdateResult.no_update),
        (["a"], ["a", "b"], HostUpdateResult.added),
        (["a", "b"], ["a"], HostUpdateResult.removed),
        (["a", "b"], ["a", "c"], HostUpdateResult.mixed),
    ],
)
def test_missed_update_names_the_change(
    assigned: list[str], available: list[str], expected: HostUpdateResult
) -> None:
    assert missed_update(assigned, available) == expected


@pytest.fixture(autouse=True)
def fast_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(horovod_driver, "DISCOVER_HOSTS_FREQUENCY_SECS", 0.05)


class Hosts(HostDiscovery):  # type: ignore[misc]
    def __init__(self, *hosts: str) -> None:
        self.hosts = {h: 1 for h in hosts}

    def find_available_hosts_and_slots(self) -> dict[str, int]:
        return dict(self.hosts)


class Rendezvous:
    def init(self, host_assignments: Any) -> None:
        pass

    def stop(self) -> None:
        pass


class Listener:
    """What `hvd.elastic.State` does with an update: queue it for the next commit."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.got = threading.Event()

    def on_hosts_updated(self, timestamp: float, update_res: int) -> None:
        self.updates.append(int(update_res))
        self.got.set()


def patched_driver() -> type:
    class Driver(horovod_driver.ElasticDriver):  # type: ignore[misc]
        pass

    notify_missed_updates_on_registration(Driver)
    return Driver


def start_up(driver_cls: Any, manager: WorkerNotificationManager, listen_first: bool) -> list[int]:
    """A job starts on host a; host b turns up while rank 0 starts (before it registered its
    notification server); rank 0 registers, then its state listens (or, `listen_first`, the
    state listens already). The updates that reach rank 0's state."""
    discovery = Hosts("a")
    driver = driver_cls(Rendezvous(), discovery, min_num_proc=1, max_num_proc=2, timeout=10)
    key = secret.make_secret_key()
    service = WorkerNotificationService(key, None, manager)
    stop, listener = threading.Event(), Listener()

    def worker(slot_info: Any, events: Any) -> tuple[int, float]:
        stop.wait(10)
        return 0, time.time()

    try:
        driver.start(1, worker)
        discovery.hosts["b"] = 1
        deadline = time.monotonic() + 10
        while "b" not in driver._host_manager.current_hosts.available_hosts:
            assert time.monotonic() < deadline, "the driver never discovered host b"
            time.sleep(0.02)
        time.sleep(0.1)  # the discovery thread's (dropped) notification has gone
        if listen_first:
            manager.register_listener(listener)
        driver.register_worker_server("a", 0, service.addresses(), key)
        if not listen_first:
            manager.register_listener(listener)  # as horovod.common.elastic.run_fn does
        listener.got.wait(1)  # a notification takes milliseconds here
        return listener.updates
    finally:
        stop.set()
        driver.stop()
        service.shutdown()


def test_a_host_found_while_rank_0_started_reaches_its_state() -> None:
    manager = WorkerNotificationManager()
    keep_updates_until_listened(manager)
    assert start_up(patched_driver(), manager, listen_first=False) == [HostUpdateResult.added]


def test_without_the_workers_patch_the_update_arrives_before_anyone_listens() -> None:
    assert start_up(patched_driver(), WorkerNotificationManager(), listen_first=False) == []
    # (with a listener already there the driver's patch alone delivers it)
    manager = WorkerNotificationManager()
    assert start_up(patched_driver(), manager, listen_first=True) == [HostUpdateResult.added]


def test_horovods_own_driver_drops_the_change() -> None:
    """Why the driver's patch exists: rank 0 never hears of host b (until another change)."""
    assert start_up(horovod_driver.ElasticDriver, WorkerNotificationManager(), True) == []


def test_the_kept_updates_go_to_the_next_listener_only() -> None:
    manager = WorkerNotificationManager()
    keep_updates_until_listened(manager)
    manager.handle_hosts_updated(1.0, HostUpdateResult.added)
    first, second = Listener(), Listener()
    manager.register_listener(first)
    manager.handle_hosts_updated(2.0, HostUpdateResult.removed)
    manager.register_listener(second)
    assert first.updates == [HostUpdateResult.added, HostUpdateResult.removed]
    assert second.updates == []
