"""The operator's Prometheus metrics: the contract in docs/metrics.md, as prometheus-client objects.

One `OperatorMetrics` per operator process (kept in kopf's `memo`, not a module global), each with
its own registry, so tests and a second operator in the same interpreter never share series.

Cardinality is bounded on purpose:
- enumerated labels (phase, direction, reason, role, state) are folded into a fixed set; anything
  unexpected becomes `Other`/`Unknown` rather than a new series;
- per-run and per-pod series exist only while the object does: `forget_run`/`forget_pod`/
  `forget_experiment` drop them, so the series count follows the live objects, not history;
- nothing is labelled per step, per epoch or per error message.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, get_args
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from accordion_operator.api.trainingrun import Phase

#: Phases a run reports in `status.phase` (the API's own list); anything else is `Unknown`.
RUN_PHASES: Final = frozenset(get_args(Phase))
#: Why the worker count changed.
RESCALE_REASONS: Final = frozenset(
    {"CapacityAvailable", "Preempted", "WorkerLost", "SpecChanged", "Admitted", "Other"}
)
RESCALE_DIRECTIONS: Final = frozenset({"up", "down"})
#: Pod failure reasons: the termination reasons of docs/contract.md plus the kubelet's own.
POD_FAILURE_REASONS: Final = frozenset(
    {
        "DataUnreachable",
        "DataAccessDenied",
        "DataNotFound",
        "DataUnreadable",
        "ModelInvalid",
        "TrainingDiverged",
        "TrainingError",
        "OOMKilled",
        "Evicted",
        "Other",
    }
)
ROLES: Final = frozenset({"launcher", "worker"})
#: States of an Experiment's trials: a created run waits for admission (Pending) or trains
#: (Running); a finished one Succeeded, Failed, was Pruned by early stopping, or was Stopped because
#: the search ended (docs/experiments.md).
TRIAL_STATES: Final = frozenset({"Pending", "Running", "Succeeded", "Failed", "Pruned", "Stopped"})
PREEMPTION_REASONS: Final = frozenset({"HigherPriority", "Quota", "Other"})

#: Seconds a run waits between creation and admission: from "a GPU was free" to "the cluster
#: is full for hours".
ADMISSION_WAIT_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                                 7200.0, 21600.0)  # fmt: skip
#: Seconds a handler call takes: a few apiserver round trips, occasionally a slow list.
RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _gauge(r: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
    return Gauge(name, doc, labels, registry=r)


def _counter(r: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...]) -> Counter:
    return Counter(name, doc, labels, registry=r)


def _histogram(
    r: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...], buckets: Sequence[float]
) -> Histogram:
    return Histogram(name, doc, labels, buckets=buckets, registry=r)


def _fold(value: str, allowed: frozenset[str], fallback: str) -> str:
    return value if value in allowed else fallback


class OperatorMetrics:
    """Every operator metric of docs/metrics.md, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._declare_runs(r)
        self._declare_handlers(r)
        self._declare_experiments(r)
        # Per-run and per-pod state, exported by _StateCollector at scrape time: at 10,000 runs
        # and 16,000 pods one Gauge child per series held ~50 MB (a replay of the scale
        # benchmark); plain tuples hold a tenth of that.
        self._run_state: dict[tuple[str, str], tuple[str, int, int, int]] = {}
        self._run_failures: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._pods: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._trial_states: dict[tuple[str, str], set[str]] = {}
        self._namespaces: set[str] = set()
        self._lock = threading.Lock()
        r.register(_StateCollector(self))

    def _declare_runs(self, r: CollectorRegistry) -> None:
        """Runs, queues, admission, rescaling, preemption and pod failures."""
        self.build_info = _gauge(
            r,
            "accordion_operator_build_info",
            "Always 1; the operator's version as a label.",
            ("version",),
        )
        self.leader = _gauge(
            r,
            "accordion_operator_leader",
            "1 while this replica holds the operator's Lease and reconciles; 0 on a standby.",
            (),
        )
        self.runs = _gauge(
            r, "accordion_runs", "TrainingRuns by namespace and phase.", ("namespace", "phase")
        )
        self.cluster_gpus_capacity = _gauge(
            r,
            "accordion_cluster_gpus_capacity",
            "Allocatable GPUs on schedulable nodes, as the allocator sees them.",
            (),
        )
        self.queue_length = _gauge(
            r, "accordion_queue_length", "Runs waiting for admission.", ("namespace",)
        )
        self.admission_wait_seconds = _histogram(
            r,
            "accordion_admission_wait_seconds",
            "Time from a run's creation to its admission.",
            ("namespace",),
            ADMISSION_WAIT_BUCKETS,
        )
        self.rescale_events = _counter(
            r,
            "accordion_rescale_events",
            "Changes of a run's desired worker count.",
            ("namespace", "direction", "reason"),
        )
        self.preemptions = _counter(
            r,
            "accordion_preemptions",
            "Workers taken from a run to give their GPUs to another.",
            ("namespace", "reason"),
        )
        self.run_pod_failures = _counter(
            r,
            "accordion_run_pod_failures",
            "Failed pods of a run, by role and termination reason.",
            ("namespace", "run", "role", "reason"),
        )

    def _declare_handlers(self, r: CollectorRegistry) -> None:
        """The controllers' passes and their apiserver requests."""
        self.reconcile_duration_seconds = _histogram(
            r,
            "accordion_reconcile_duration_seconds",
            "Duration of one handler call.",
            ("handler",),
            RECONCILE_BUCKETS,
        )
        self.reconcile_errors = _counter(
            r, "accordion_reconcile_errors", "Handler calls that raised.", ("handler",)
        )
        self.apiserver_request_errors = _counter(
            r,
            "accordion_apiserver_request_errors",
            "Failed requests to the Kubernetes API, by verb, resource and HTTP status code.",
            ("verb", "resource", "code"),
        )

    def _declare_experiments(self, r: CollectorRegistry) -> None:
        """Experiments: trials by state, budget, best objective."""
        self.experiment_trials = _gauge(
            r,
            "accordion_experiment_trials",
            "Trials of an Experiment by state.",
            ("namespace", "experiment", "state"),
        )
        self.experiment_trials_max = _gauge(
            r,
            "accordion_experiment_trials_max",
            "Trials the Experiment will run in all (spec).",
            ("namespace", "experiment"),
        )
        self.experiment_best_objective = _gauge(
            r,
            "accordion_experiment_best_objective",
            "Best objective value among the Experiment's finished trials.",
            ("namespace", "experiment"),
        )

    # -- runs -------------------------------------------------------------------------------

    def set_runs_by_phase(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace `accordion_runs` with `{(namespace, phase): count}` (stale pairs vanish)."""
        folded: dict[tuple[str, str], int] = {}
        for (ns, phase), n in counts.items():
            key = (ns, _fold(phase, RUN_PHASES, "Unknown"))
            folded[key] = folded.get(key, 0) + n
        with self._lock:
            self.runs.clear()
            for (ns, phase), n in folded.items():
                self.runs.labels(namespace=ns, phase=phase).set(n)

    def set_run_state(
        self,
        namespace: str,
        run: str,
        *,
        phase: str,
        workers_desired: int,
        workers_current: int,
        gpus_allocated: int,
    ) -> None:
        """Export one run's current phase, worker counts and GPUs."""
        phase = _fold(phase, RUN_PHASES, "Unknown")
        with self._lock:
            self._run_state[(namespace, run)] = (
                phase,
                workers_desired,
                workers_current,
                gpus_allocated,
            )

    def count_pod_failure(self, namespace: str, run: str, *, role: str, reason: str) -> None:
        role = _fold(role, ROLES, "worker")
        reason = _fold(reason, POD_FAILURE_REASONS, "Other")
        with self._lock:
            self._run_failures.setdefault((namespace, run), set()).add((role, reason))
        self.run_pod_failures.labels(namespace=namespace, run=run, role=role, reason=reason).inc()

    def forget_run(self, namespace: str, run: str) -> None:
        """Drop every per-run series of a deleted run."""
        key = (namespace, run)
        with self._lock:
            self._run_state.pop(key, None)
            failures = self._run_failures.pop(key, set())
        for role, reason in failures:
            self.run_pod_failures.remove(namespace, run, role, reason)

    # -- allocator and queue ----------------------------------------------------------------

    def set_queue_lengths(self, lengths: Mapping[str, int]) -> None:
        """Replace `accordion_queue_length` with `{namespace: waiting runs}`."""
        with self._lock:
            self.queue_length.clear()
            for ns, n in lengths.items():
                self.queue_length.labels(namespace=ns).set(n)

    def observe_admission(self, namespace: str, waited_seconds: float) -> None:
        self.admission_wait_seconds.labels(namespace=namespace).observe(max(0.0, waited_seconds))

    def count_rescale(self, namespace: str, *, old: int, new: int, reason: str) -> None:
        """Count one change of desired workers; a no-op when the count did not change."""
        if new == old:
            return
        direction = "up" if new > old else "down"
        reason = _fold(reason, RESCALE_REASONS, "Other")
        self.rescale_events.labels(namespace=namespace, direction=direction, reason=reason).inc()

    def count_preemption(self, namespace: str, reason: str = "HigherPriority") -> None:
        reason = _fold(reason, PREEMPTION_REASONS, "Other")
        self.preemptions.labels(namespace=namespace, reason=reason).inc()

    def declare_namespaces(self, namespaces: Iterable[str]) -> None:
        """Export 0 preemptions for each namespace that has runs, so that the preemption panel
        reads 0 rather than "no data" and `increase()` sees the first preemption."""
        for ns in namespaces:
            with self._lock:
                if ns in self._namespaces:
                    continue
                self._namespaces.add(ns)
            for reason in PREEMPTION_REASONS:
                self.preemptions.labels(namespace=ns, reason=reason)

    # -- pods -------------------------------------------------------------------------------

    def set_pod_info(
        self, namespace: str, pod: str, *, run: str, role: str, experiment: str = ""
    ) -> None:
        role = _fold(role, ROLES, "worker")
        with self._lock:
            self._pods[(namespace, pod)] = (run, experiment, role)

    def forget_pod(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._pods.pop((namespace, pod), None)

    def known_pods(self) -> Iterable[tuple[str, str]]:
        """(namespace, pod) of every pod with an info series (to forget those that vanished)."""
        with self._lock:
            return list(self._pods)

    # -- experiments ------------------------------------------------------------------------

    def set_experiment(
        self,
        namespace: str,
        experiment: str,
        *,
        trials: Mapping[str, int],
        max_trials: int,
        best_objective: float | None,
    ) -> None:
        """Export an Experiment's trial counts by state, its trial budget and best objective."""
        folded: dict[str, int] = {}
        for state, n in trials.items():
            s = _fold(state, TRIAL_STATES, "Pending")
            folded[s] = folded.get(s, 0) + n
        key = (namespace, experiment)
        with self._lock:
            for gone in self._trial_states.get(key, set()) - set(folded):
                self.experiment_trials.remove(namespace, experiment, gone)
            self._trial_states[key] = set(folded)
        for state, n in folded.items():
            self.experiment_trials.labels(
                namespace=namespace, experiment=experiment, state=state
            ).set(n)
        self.experiment_trials_max.labels(namespace=namespace, experiment=experiment).set(
            max_trials
        )
        if best_objective is not None:
            self.experiment_best_objective.labels(namespace=namespace, experiment=experiment).set(
                best_objective
            )

    def forget_experiment(self, namespace: str, experiment: str) -> None:
        with self._lock:
            states = self._trial_states.pop((namespace, experiment), set())
        for state in states:
            self.experiment_trials.remove(namespace, experiment, state)
        self.experiment_trials_max.remove(namespace, experiment)
        self.experiment_best_objective.remove(namespace, experiment)

    # -- operator health --------------------------------------------------------------------

    def forget_state(self) -> None:
        """A term of leadership ended: drop every gauge of the cluster's state (runs, queues,
        pods, experiments, capacity), which a standby does not keep current, so that sums over
        the replicas count each run once. Counters and histograms stay (they are per process)."""
        with self._lock:
            self._run_state.clear()
            self._run_failures.clear()
            self._pods.clear()
            self._trial_states.clear()
            self.runs.clear()
            self.queue_length.clear()
        for gauge in (
            self.experiment_trials,
            self.experiment_trials_max,
            self.experiment_best_objective,
        ):
            gauge.clear()
        self.cluster_gpus_capacity.set(0)

    def declare_handlers(self, handlers: Iterable[str]) -> None:
        """Export 0 errors for each handler up front: `rate()` and `increase()` miss the first
        increment of a counter that appears at 1, so the error alert needs the zero."""
        for handler in handlers:
            self.reconcile_errors.labels(handler=handler)
            self.reconcile_duration_seconds.labels(handler=handler)

    def observe_reconcile(self, handler: str, seconds: float, *, failed: bool) -> None:
        self.reconcile_duration_seconds.labels(handler=handler).observe(seconds)
        if failed:
            self.reconcile_errors.labels(handler=handler).inc()

    def count_apiserver_error(self, verb: str, resource: str, code: int | None) -> None:
        """Count a failed API request; `code` None means no HTTP answer (connection error)."""
        self.apiserver_request_errors.labels(
            verb=verb.lower(), resource=resource, code=str(code) if code else "none"
        ).inc()


class _StateCollector(Collector):
    """The per-run and per-pod gauges, generated from OperatorMetrics' state at each scrape."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # names are not reserved in the registry: nothing else exports them

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        with m._lock:
            runs = list(m._run_state.items())
            pods = list(m._pods.items())
        fam = {
            name: GaugeMetricFamily(name, doc, labels=list(labels))
            for name, (doc, labels) in STATE_FAMILIES.items()
        }
        for (ns, run), (phase, desired, current, gpus) in runs:
            fam["accordion_run_phase"].add_metric([ns, run, phase], 1)
            fam["accordion_run_workers_desired"].add_metric([ns, run], desired)
            fam["accordion_run_workers_current"].add_metric([ns, run], current)
            fam["accordion_run_gpus_allocated"].add_metric([ns, run], gpus)
        for (ns, pod), (run, experiment, role) in pods:
            fam["accordion_pod_info"].add_metric([ns, pod, run, experiment, role], 1)
        return list(fam.values())


#: the gauges _StateCollector generates: name -> (help, label names)
STATE_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "accordion_run_phase": (
        "1 for the current phase of each TrainingRun (only the current phase is exported).",
        ("namespace", "run", "phase"),
    ),
    "accordion_run_workers_desired": (
        "Workers the operator wants for the run now (between minWorkers and maxWorkers).",
        ("namespace", "run"),
    ),
    "accordion_run_workers_current": (
        "Worker pods of the run that are Ready.",
        ("namespace", "run"),
    ),
    "accordion_run_gpus_allocated": (
        "GPUs requested by the run's pods that are bound to nodes.",
        ("namespace", "run"),
    ),
    "accordion_pod_info": (
        "Always 1; links a pod to its run and experiment, to join per-pod metrics (DCGM).",
        ("namespace", "pod", "run", "experiment", "role"),
    ),
}


def start_metrics_server(
    port: int,
    metrics: OperatorMetrics,
    *,
    addr: str = "0.0.0.0",  # noqa: S104 (Prometheus scrapes the pod IP)
    version: str = "unknown",
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `/metrics` of `metrics` on `addr:port` in a daemon thread; port 0 picks a free one.

    Binds all interfaces by default: Prometheus scrapes the pod IP. Stop it with
    `server.shutdown()`.
    """
    metrics.build_info.labels(version=version).set(1)
    return start_http_server(port, addr=addr, registry=metrics.registry)
