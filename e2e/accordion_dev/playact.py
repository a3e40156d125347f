"""A launcher played by a speedup model, for TrainingRuns on simulated (kwok) nodes, where nothing
trains: it watches a run's worker pods as the real launcher's host discovery does (the run's
Ready worker pods, docs/contract.md), trains at the rate the model gives for that many workers,
pauses on every change of the world as an elastic reset does, reports progress into
`status.training` as rank 0 does through the real launcher, and when the run's work is done ends
the launcher pod with exit code 0 (the operator then marks the run Succeeded and frees its GPUs).

`PlayedRun` is the pure part (a run's work, world and pauses over time); `Player` is the I/O:
one watch of a namespace's pods and the writes, for every run of the namespace at once (the
trace replay plays 200 runs on one core). Time is whatever clock the caller passes: the replay
compresses a trace's hours into seconds by scaling the work and the pauses, not the clock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from accordion_dev import labels
from accordion_dev.simulated_runs import MERGE


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class PlayedRun:
    """One run's training as the speedup model plays it.

    `work` is seconds of training at `ref_workers` workers; at `n` workers the run trains
    `speedup(n) / speedup(ref_workers)` of that per second. Training starts when `min_workers`
    are Ready (the real launcher's `--min-np`), without a pause (the world forms once); every
    later change of the world pauses training for `grow_pause` (more workers, or back from none)
    or `shrink_pause` (fewer) seconds, as an elastic reset does. `epochs` equal slices of the
    work are the epochs the run reports. A new count of Ready workers is taken only once it has
    held for `settle` seconds: pods granted together turn Ready milliseconds apart, and Horovod's
    discovery poll admits them in one reset, not one per pod."""

    name: str
    work: float
    ref_workers: int
    min_workers: int
    speedup: Callable[[int], float]
    grow_pause: float = 0.0
    shrink_pause: float = 0.0
    epochs: int = 1
    settle: float = 0.0
    #: workers in the world (0 before the start and while preempted)
    world: int = 0
    #: work done (seconds at ref_workers), exact at `clock`
    done: float = 0.0
    clock: float | None = None
    paused_until: float = 0.0
    started: float | None = None
    finished: float | None = None
    grows: int = 0
    shrinks: int = 0
    preemptions: int = 0
    #: (time, world) at every change of the world
    worlds: list[tuple[float, int]] = field(default_factory=list)
    #: the last count of Ready workers seen, and since when
    _seen: int = 0
    _seen_since: float = 0.0

    def __post_init__(self) -> None:
        if self.work <= 0 or self.ref_workers < 1 or self.min_workers < 1 or self.epochs < 1:
            raise ValueError(f"{self.name}: work, ref_workers, min_workers, epochs must be > 0")

    @property
    def rescales(self) -> int:
        return self.grows + self.shrinks

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return min(self.epochs, int(self.done / self.work * self.epochs + 1e-9))

    def rate(self) -> float:
        """Work per second while training at the current world."""
        return self.speedup(self.world) / self.speedup(self.ref_workers) if self.world else 0.0

    def training(self, now: float) -> bool:
        return self.world > 0 and self.paused_until <= now and self.finished is None

    def advance(self, now: float) -> None:
        """Bring the work up to `now` at the current world; mark the run finished (at the exact
        instant its work ran out) when it is done."""
        if self.clock is None or self.finished is not None:
            self.clock = now
            return
        begin = max(self.clock, self.paused_until)
        rate = self.rate()
        if rate > 0 and now > begin:
            left = self.work - self.done
            if rate * (now - begin) >= left:
                self.done = self.work
                self.finished = begin + left / rate
            else:
                self.done += rate * (now - begin)
        self.clock = now

    def observe(self, now: float, ready: int) -> bool:
        """Advance to `now`, then take `ready` Ready workers as the new world (the launcher's
        host discovery) once that count has held for `settle` seconds. True when the world
        changed."""
        self.advance(now)
        if self.finished is not None:
            return False
        if ready != self._seen:
            self._seen, self._seen_since = ready, now
        if now - self._seen_since < self.settle:
            return False
        if self.started is None:
            if ready < self.min_workers:
                return False
            self.started = now
        elif ready == self.world:
            return False
        elif ready == 0:
            self.preemptions += 1
        elif ready > self.world:
            if self.world:
                self.grows += 1
            self.paused_until = now + self.grow_pause
        else:
            self.shrinks += 1
            self.paused_until = now + self.shrink_pause
        self.world = ready
        self.worlds.append((now, ready))
        return True

    def finishes_at(self, now: float) -> float | None:
        """When the work runs out if the world stays as it is (None: it does not train)."""
        rate = self.rate()
        if self.finished is not None or rate <= 0:
            return None
        return max(now, self.paused_until) + (self.work - self.done) / rate


@dataclass
class PodSeen:
    run: str
    role: str
    #: a Horovod host (it carries a worker index): a worker pod, or a launcher hosting worker 0
    host: bool
    ready: bool
    deleting: bool
    phase: str
    node: str | None
    env: dict[str, str]


class Player:
    """Plays the launchers of the runs `add`ed in `namespace`, from one pod watch.

    Call `step()` often (it does the work of every run) and `close()` at the end. A run is
    reported (`status.training`) when its world changes and at each epoch end; when its work is
    done, with its final epoch and results location, and its launcher pod is then set to
    Succeeded with exit code 0, as `simulated_runs.finish_run` does for one run. The writes go
    through `writers` threads, so that `step` never waits for the apiserver: a loaded apiserver
    would otherwise delay every run's view of its workers by the sum of the writes before it.
    A run's writes are made in order, a report only with the latest state."""

    def __init__(
        self, http: httpx.Client, watch_http: httpx.Client, namespace: str, writers: int = 8
    ) -> None:
        self.http = http
        self.ns = namespace
        self.runs: dict[str, PlayedRun] = {}
        self.pods: dict[str, PodSeen] = {}
        self._reported: dict[str, int] = {}
        self._ended: set[str] = set()
        #: when each ended run's worker pods were all gone (its GPUs free for others)
        self.released: dict[str, float] = {}
        #: per run, when the watch first saw a worker pod of it, bound, Ready (where the
        #: control plane's time goes)
        self.first: dict[str, dict[str, float]] = {}
        self._writes = ThreadPoolExecutor(writers, thread_name_prefix=f"playact-{namespace}")
        self._pending: list[Future[None]] = []
        #: per run: the report to write next, and the lock that keeps its writes in order
        self._latest: dict[str, dict[str, Any]] = {}
        self._order: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._watch, args=(watch_http,), daemon=True, name=f"playact-{namespace}"
        )
        self._thread.start()
        if not self._synced.wait(30):
            raise TimeoutError(f"no pod list of {namespace} within 30 s")

    @property
    def ended(self) -> int:
        """Runs whose launcher exited."""
        return len(self._ended)

    def add(self, run: PlayedRun) -> None:
        with self._lock:
            self.runs[run.name] = run

    def close(self) -> None:
        """Stop the watch; wait for the writes (a launcher's exit among them) to be made."""
        self._stop.set()
        self._writes.shutdown(wait=True)
        self._raise_failed()

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for f in done:
            f.result()  # a failed write raises here

    # --- the pod watch ---------------------------------------------------------------------------

    def _watch(self, http: httpx.Client) -> None:
        url = f"/api/v1/namespaces/{self.ns}/pods"
        selector = {"labelSelector": labels.RUN}
        try:
            while not self._stop.is_set():
                listed = http.get(url, params=selector)
                listed.raise_for_status()
                body = listed.json()
                with self._lock:
                    self.pods = {
                        p["metadata"]["name"]: self._seen(p) for p in body.get("items") or ()
                    }
                self._synced.set()
                rv = body["metadata"]["resourceVersion"]
                query = {**selector, "watch": "1", "resourceVersion": rv}
                with http.stream("GET", url, params=query, timeout=None) as r:
                    r.raise_for_status()
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if line and not self._event(json.loads(line)):
                            break  # history compacted (410): list again
        except BaseException as exc:  # the main loop raises it
            if not self._stop.is_set():
                self.error = exc
                self._synced.set()

    def _event(self, ev: dict[str, Any]) -> bool:
        obj = ev["object"]
        if ev["type"] == "ERROR":
            if obj.get("code") == 410:
                return False
            raise RuntimeError(f"pod watch failed: {obj.get('message')}")
        name = obj["metadata"]["name"]
        now = time.time()
        with self._lock:
            if ev["type"] == "DELETED":
                self.pods.pop(name, None)
            elif ev["type"] in ("ADDED", "MODIFIED"):
                seen = self.pods[name] = self._seen(obj)
                if seen.host:
                    first = self.first.setdefault(seen.run, {})
                    first.setdefault("pod", now)
                    if seen.node:
                        first.setdefault("bound", now)
                    if seen.ready:
                        first.setdefault("ready", now)
        return True

    @staticmethod
    def _seen(pod: dict[str, Any]) -> PodSeen:
        meta, status = pod["metadata"], pod.get("status") or {}
        own = meta.get("labels") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or ()
        )
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        env = {e["name"]: str(e.get("value", "")) for e in containers[0].get("env") or ()}
        return PodSeen(
            run=own.get(labels.RUN, ""),
            role=own.get(labels.ROLE, ""),
            host=labels.WORKER_INDEX in own,
            ready=ready,
            deleting=bool(meta.get("deletionTimestamp")),
            phase=status.get("phase") or "Pending",
            node=(pod.get("spec") or {}).get("nodeName"),
            env=env if own.get(labels.ROLE) == "launcher" else {},
        )

    # --- playing ---------------------------------------------------------------------------------

    def world_pods(self) -> tuple[dict[str, list[str]], dict[str, str], dict[str, int]]:
        """(Ready live Horovod hosts per run, sorted by name; launcher phase per run; hosts
        bound to a node and not ended per run: the GPUs the run holds). A launcher that hosts
        worker 0 counts in all three."""
        ready: dict[str, list[str]] = {}
        launchers: dict[str, str] = {}
        bound: dict[str, int] = {}
        with self._lock:
            for name, p in self.pods.items():
                if p.role == "launcher":
                    launchers[p.run] = "Deleting" if p.deleting else p.phase
                if p.host:
                    if p.ready and not p.deleting and p.phase == "Running":
                        ready.setdefault(p.run, []).append(name)
                    if p.node and p.phase not in ("Succeeded", "Failed"):
                        bound[p.run] = bound.get(p.run, 0) + 1
        for names in ready.values():
            names.sort()
        return ready, launchers, bound

    def step(self, now: float | None = None) -> list[PlayedRun]:
        """Advance every run to `now` (time.time() by default) from the pods seen; report and
        end the runs that need it. Returns the runs that finished in this step."""
        if self.error is not None:
            raise self.error
        self._raise_failed()
        now = time.time() if now is None else now
        ready, launchers, bound = self.world_pods()
        finished = []
        for name, run in list(self.runs.items()):
            if name in self._ended:
                if name not in self.released and not bound.get(name):
                    self.released[name] = now
                continue
            launcher_up = launchers.get(name) == "Running"
            workers = ready.get(name, []) if launcher_up else []
            changed = run.observe(now, len(workers))
            if run.finished is not None:
                self._finish(run, workers)
                finished.append(run)
            elif changed or run.epoch != self._reported.get(name, 0):
                self._report(run, workers, now)
        return finished

    def _training(self, run: PlayedRun, workers: list[str], now: float) -> dict[str, Any]:
        world = workers[: run.world] if run.world else []
        return {
            "epoch": run.epoch,
            "worldSize": len(world),
            "worldPods": world,
            "rank0Pod": world[0] if world else None,
            "worldTime": _rfc3339(now),
            "updatedAt": _rfc3339(now),
            "metrics": {"loss": round(1.0 - run.done / run.work, 6)},
        }

    def _report(self, run: PlayedRun, workers: list[str], now: float) -> None:
        self._reported[run.name] = run.epoch
        self._submit(run.name, self._training(run, workers, now), final=False)

    def _finish(self, run: PlayedRun, workers: list[str]) -> None:
        """The final report and the launcher's exit 0, at the instant the work ran out."""
        assert run.finished is not None
        self._ended.add(run.name)
        with self._lock:
            launcher = self.pods.get(f"{run.name}-launcher")
        env = launcher.env if launcher else {}
        training = self._training(run, workers, run.finished)
        if env.get("ACCORDION_RESULTS_BUCKET"):
            bucket, path = env["ACCORDION_RESULTS_BUCKET"], env.get("ACCORDION_RESULTS_PATH", "")
            training["resultsURI"] = f"s3://{bucket}/{path}"
        self._submit(run.name, training, final=True)

    def _submit(self, name: str, training: dict[str, Any], *, final: bool) -> None:
        with self._lock:
            self._latest[name] = training
            self._order.setdefault(name, threading.Lock())
        self._pending.append(self._writes.submit(self._write, name, final))

    def _write(self, name: str, final: bool) -> None:
        """The run's latest report (none if a write before this one took it), and with `final`
        the launcher's exit; one run's writes one at a time, so a report is never undone by an
        older one."""
        with self._order[name]:
            with self._lock:
                training = self._latest.pop(name, None)
            if training is not None:
                r = self.http.patch(
                    f"/apis/accordion.dev/v1alpha1/namespaces/{self.ns}/trainingruns/{name}/status",
                    json={"status": {"training": training}},
                    headers=MERGE,
                )
                if r.status_code != 404:  # a run deleted meanwhile has nothing to report to
                    r.raise_for_status()
            if final:
                self._exit_launcher(name)

    def _exit_launcher(self, name: str) -> None:
        pod_url = f"/api/v1/namespaces/{self.ns}/pods/{name}-launcher"
        pod = self.http.get(pod_url)
        if pod.status_code == 404:
            return
        pod.raise_for_status()
        stamp = _rfc3339(time.time())
        done = {"exitCode": 0, "reason": "Completed", "startedAt": stamp, "finishedAt": stamp}
        statuses = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"terminated": done},
            }
            for c in pod.json()["spec"]["containers"]
        ]
        self.http.patch(
            pod_url + "/status",
            json={"status": {"phase": "Succeeded", "containerStatuses": statuses}},
            headers=MERGE,
        ).raise_for_status()
