"""Reconcile cost of one Experiment with 500 runs (issue 6: "reconcile cost per Experiment").

    .venv/bin/python benchmarks/experiment.py [--runs 500] [--repeat 7]

Writes benchmarks/results/experiment.json. The workload: an Experiment with maxRuns 1000 and
parallelism 10 that has 500 child runs, 490 finished (each with a 30-epoch history of the
objective, as the trainer reports it) and 10 running (15 epochs so far). Timed, pure CPU (the
kube I/O is not included; it is one request per created/stopped run plus one status patch):

- observe: parse the 500 child TrainingRun dicts (`observe_child`);
- steady: `decide_experiment` when nothing is to be created or pruned and the status is
  current (the common pass: no write);
- ask-<algorithm>: a run just finished, so the study is rebuilt from all 500 trials and the
  next trial is asked (random, tpe, grid);
- prune-<pruner>: pruning on, the study is rebuilt and the 10 running trials are judged
  (median, successiveHalving, hyperband), cold (first pass after an operator start: the
  finished trials' rung values are replayed) and warm (the controller's memo holds them);
- controller-pass: `ExperimentController.plans` for the Experiment (fingerprint, model
  validation, observe, decide) as the operator runs it after a watch event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from accordion_dev.simulated_runs import LEARNING_RATE, experiment_body
from accordion_operator.api.experiment import Experiment
from accordion_operator.config import Config
from accordion_operator.core.objects import LABEL_EXPERIMENT
from accordion_operator.experiment.cache import ExperimentCache
from accordion_operator.experiment.controller import ExperimentController
from accordion_operator.experiment.decide import decide_experiment
from accordion_operator.experiment.observe import ChildRun, observe_child
from accordion_operator.experiment.search import RungMemo
from accordion_operator.experiment.trials import ANNOTATION_PARAMETERS, ANNOTATION_TRIAL, run_name

OUT = Path(__file__).resolve().parent / "results" / "experiment.json"
NOW = 1_800_000_000.0
EPOCHS = 30


def experiment(algorithm: str, pruner: str = "none") -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        LEARNING_RATE,
        {"name": "units", "type": "int", "min": 32, "max": 512, "step": 32},
        {"name": "optimizer", "type": "categorical", "values": ["adam", "sgd", "rmsprop"]},
    ]
    if algorithm == "grid":
        params[0] = {
            "name": "learning_rate",
            "type": "double",
            "min": 0.001,
            "max": 0.1,
            "step": 0.001,
        }
    return experiment_body(
        "bench",
        metadata={
            "namespace": "team-a",
            "uid": "exp-uid",
            "generation": 1,
            "resourceVersion": "1",
        },
        template={"epochs": EPOCHS},
        parameters=params,
        algorithm=algorithm,
        seed=1,
        maxRuns=1000,
        parallelism=10,
        earlyStopping={"algorithm": pruner, "startupRuns": 5, "minEpochs": 1},
    )


def children(exp: Experiment, runs: int, running: int, seed: int = 3) -> list[dict[str, Any]]:
    """Child run bodies with suggestions of the experiment's own sampler (valid parameters)."""
    from accordion_operator.experiment.search import build_study, suggest

    rng = random.Random(seed)
    sugg = suggest(build_study(exp.spec, [], exp.key), runs)
    out = []
    for s in sugg:
        done = s.number < runs - running
        epochs = EPOCHS if done else EPOCHS // 2
        quality = 0.6 + 0.3 * rng.random()
        curve = [quality * (1 - math.exp(-(e + 1) / 5)) for e in range(epochs)]
        history = [{"epoch": e + 1, "val_accuracy": v, "loss": 1 - v} for e, v in enumerate(curve)]
        name = run_name("bench", s.number)
        out.append(
            {
                "metadata": {
                    "name": name,
                    "namespace": "team-a",
                    "resourceVersion": str(100 + s.number),
                    "labels": {LABEL_EXPERIMENT: "bench"},
                    "annotations": {
                        ANNOTATION_TRIAL: str(s.number),
                        ANNOTATION_PARAMETERS: json.dumps(s.params),
                    },
                    "ownerReferences": [{"kind": "Experiment", "uid": "exp-uid", "name": "bench"}],
                },
                "spec": {"results": {"bucket": "results"}},
                "status": {
                    "phase": "Succeeded" if done else "Running",
                    "training": {
                        "epoch": epochs,
                        "metrics": {"val_accuracy": curve[-1]},
                        "history": history,
                    },
                },
            }
        )
    return out


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()  # warm-up (imports, caches)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": round(statistics.median(samples), 2),
        "min_ms": round(min(samples), 2),
        "max_ms": round(max(samples), 2),
    }


def observe_all(exp: Experiment, bodies: list[dict[str, Any]]) -> list[ChildRun]:
    out = []
    for b in bodies:
        c = observe_child(b, "bench", "val_accuracy")
        assert c is not None
        out.append(c)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--running", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    base = Experiment.model_validate(experiment("random"))
    bodies = children(base, args.runs, args.running)
    kids = observe_all(base, bodies)
    results["observe"] = timed(lambda: observe_all(base, bodies), args.repeat)
    # steady state: the status already says what this pass computes (no write)
    first = decide_experiment(base, kids, NOW)
    assert first.create == []
    body = experiment("random")
    body["status"] = first.status_patch
    steady = Experiment.model_validate(body)
    assert decide_experiment(steady, kids, NOW).status_patch is None
    results["steady"] = timed(lambda: decide_experiment(steady, kids, NOW), args.repeat)

    # one run just finished: one slot free -> rebuild + ask
    for algorithm in ("random", "tpe", "grid"):
        exp = Experiment.model_validate(experiment(algorithm))
        b = children(exp, args.runs, args.running)
        b[-1]["status"]["phase"] = "Succeeded"
        k = observe_all(exp, b)
        plan = decide_experiment(exp, k, NOW)
        assert len(plan.create) == 1, algorithm
        results[f"ask-{algorithm}"] = timed(
            lambda e=exp, k=k: decide_experiment(e, k, NOW), args.repeat
        )

    for pruner in ("median", "successiveHalving", "hyperband"):
        exp = Experiment.model_validate(experiment("random", pruner))
        k = observe_all(exp, bodies)
        plan = decide_experiment(exp, k, NOW)
        # what the controller merges into its memo after a first decision (ExperimentPlan.rungs)
        memo: RungMemo = dict(decide_experiment(exp, k, NOW).rungs)
        results[f"prune-{pruner}"] = {
            "cold": timed(lambda e=exp, k=k: decide_experiment(e, k, NOW), args.repeat),
            # the operator keeps the memo between passes; a restart starts cold
            "warm": timed(lambda e=exp, k=k, m=memo: decide_experiment(e, k, NOW, m), args.repeat),
            "pruned": len(plan.stop),
        }

    # the operator's pass after a watch event (pure part: fingerprint, validate, observe, decide)
    async def controller_pass() -> dict[str, float]:
        cache = ExperimentCache()
        cache.apply("experiment", "ADDED", experiment("random", "median"), wake=False)
        for body in bodies:
            cache.apply("run", "ADDED", body, wake=False)
        ctl = ExperimentController(Config(), None, cache, clock=lambda: NOW)  # type: ignore[arg-type]

        def one() -> None:
            ctl.seen.clear()
            (plan,) = ctl.plans(NOW)
            assert plan[1].status_patch is not None

        return timed(one, args.repeat)

    results["controller-pass"] = asyncio.run(controller_pass())

    out = {
        "benchmark": "experiment reconcile (pure CPU, one Experiment)",
        "runs": args.runs,
        "running": args.running,
        "epochs_per_history": EPOCHS,
        "repeat": args.repeat,
        "results": results,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} (cpu), shared 2-core VM",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
