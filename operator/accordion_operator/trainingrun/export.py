"""What the TrainingRun controller exports to Prometheus (docs/metrics.md): after each pass
(runs by phase, queues, capacity, pod info) and after each run's status write (its state, a
rescale and why, the admission wait, failed pods by exit reason)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from accordion_operator.api.trainingrun import REASON_PREEMPTED, TrainingRun
from accordion_operator.core.objects import LABEL_EXPERIMENT
from accordion_operator.core.timefmt import from_rfc3339
from accordion_operator.metrics import OperatorMetrics
from accordion_operator.trainingrun.cache import ClusterCache
from accordion_operator.trainingrun.decide import Plan, rescale_reason
from accordion_operator.trainingrun.observe import EXIT_REASONS, PodState


@dataclass
class RunExport:
    metrics: OperatorMetrics
    clock: Callable[[], float]
    _known_runs: set[tuple[str, str]] = field(default_factory=set)
    #: (namespace, pod) -> (run, experiment, role) exported as accordion_pod_info
    _pod_info: dict[tuple[str, str], tuple[str, str, str]] = field(default_factory=dict)

    def after_pass(self, cache: ClusterCache, seconds: float) -> None:
        """Runs by namespace and phase, queues, capacity, pod info, the pass's duration."""
        m = self.metrics
        phases: dict[tuple[str, str], int] = {}
        queued: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        for v in cache.runs.values():
            if v.invalid is not None:
                continue
            ns, phase = v.namespace, v.phase
            phases[(ns, phase)] = phases.get((ns, phase), 0) + 1
            queued.setdefault(ns, 0)
            if phase == "Queued":
                queued[ns] += 1
            seen.add((ns, v.name))
        m.set_runs_by_phase(phases)
        m.set_queue_lengths(queued)
        m.declare_namespaces(queued)
        for ns, name in self._known_runs - seen:
            m.forget_run(ns, name)
        self._known_runs = seen
        m.cluster_gpus_capacity.set(
            sum(n.gpus for n in cache.nodes.values() if not n.unschedulable)
        )
        self._pods(cache)
        m.observe_reconcile("trainingruns", seconds, failed=False)

    def _pods(self, cache: ClusterCache) -> None:
        """`accordion_pod_info` for every pod of every run (joins DCGM's per-pod GPU series to
        runs); only the pods that appeared, changed or went are touched."""
        m = self.metrics
        pods: dict[tuple[str, str], tuple[str, str, str]] = {}
        for (ns, run), states in cache.run_pods.items():
            view = cache.runs.get((ns, run))
            experiment = view.labels.get(LABEL_EXPERIMENT, "") if view else ""
            for name, st in states.items():
                pods[(ns, name)] = (run, experiment, st.role)
        for key in set(self._pod_info) - set(pods):
            m.forget_pod(*key)
        for (ns, name), info in pods.items():
            if self._pod_info.get((ns, name)) != info:
                m.set_pod_info(ns, name, run=info[0], experiment=info[1], role=info[2])
        self._pod_info = pods

    def after_write(
        self, run: TrainingRun, plan: Plan, status: dict[str, Any], replaced: list[PodState]
    ) -> None:
        """A run's state after its status was written, its rescale, admission wait and the
        failed pods the plan replaced."""
        m = self.metrics
        ns, name = run.metadata.namespace, run.metadata.name
        m.set_run_state(
            ns,
            name,
            phase=status.get("phase") or "Pending",
            workers_desired=status.get("desiredWorkers") or 0,
            workers_current=status.get("currentWorkers") or 0,
            gpus_allocated=status.get("gpus") or 0,
        )
        old, new = run.status.desired_workers or 0, status.get("desiredWorkers") or 0
        preempted = any(reason == REASON_PREEMPTED for _, reason, _ in plan.events)
        if preempted:
            m.count_preemption(ns, "HigherPriority")
        why = rescale_reason(run, old, new, preempted=preempted)
        m.count_rescale(ns, old=old, new=new, reason=why)
        if run.status.admitted_time is None and status.get("admittedTime"):
            created = from_rfc3339(run.metadata.creation_timestamp) or self.clock()
            m.observe_admission(ns, self.clock() - created)
        if any(r in ("WorkerReplaced", "LauncherRestart") for _, r, _ in plan.events):
            # each failed pod the plan replaces, by the trainer's exit code (docs/contract.md)
            for pod in replaced:
                why = EXIT_REASONS.get(pod.exit_code or 0, "Other")
                m.count_pod_failure(ns, name, role=pod.role, reason=why)
