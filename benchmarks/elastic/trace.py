"""Job mixes from the published statistics of Microsoft's Philly cluster (issue 20, part 2).

No trace data is used or committed: jobs are drawn from the distributions below with a seed.

**GPUs per job and duration** follow the Philly trace (Jeon et al., "Analysis of Large-Scale
Multi-Tenant GPU Clusters for DNN Training Workloads", USENIX ATC'19; the trace is
msr-fiddle/philly-traces) as Gavel discretised it for its simulator (Narayanan et al.,
"Heterogeneity-Aware Cluster Scheduling Policies for Deep Learning Workloads", OSDI'20,
evaluation; ``scheduler/utils.py``: ``_generate_scale_factor`` and ``_generate_duration``,
"sampled from the Philly distribution"):

* GPUs: 1 with probability 0.70, 2 with 0.10, 4 with 0.15, 8 with 0.05 (mean 1.9);
* duration at the requested size: ``60 * 10**U(1.5, 3)`` seconds (32 min to 16.7 h) with
  probability 0.8, else ``60 * 10**U(3, 4)`` seconds (16.7 h to 6.9 days): log-uniform pieces,
  a heavy tail (mean 16.8 h, median 4.6 h; the 20 % long jobs hold 78 % of the GPU time).

These match the shape the ATC'19 paper reports (most jobs use one GPU, a few large jobs hold
most GPU time; run times span minutes to weeks), but the exact buckets are Gavel's
reading of the trace, not a table of the paper; we could not check them against the paper's
figures here.

**Arrivals** are a Poisson process (as in Gavel's generated traces), at the rate that
makes the offered load ``rho`` = (GPU-seconds requested per second) / (cluster GPUs); the
default ``rho = 0.9`` is a busy cluster: Philly's and Helios' papers are about queueing, not
idle machines. Real arrivals are diurnal and bursty (Hu et al., SC'21, characterise Helios'); a
homogeneous process is a simplification that understates bursts.

**Elastic bounds** (our rule, not the trace's: Philly jobs were not elastic): ``max`` = the
requested GPUs, ``min = ceil(max / 4)``, one GPU per worker (``max_factor`` > 1 lets a job grow
past its request, for the sensitivity run). **Work**: ``duration x GPUs``
GPU-seconds at the requested size; at ``n`` workers a job progresses at ``S(n) / S(request)`` of
its requested-size rate (speedup model).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: P(GPUs per job), Philly via Gavel (module docstring)
GPU_COUNTS: tuple[tuple[int, float], ...] = ((1, 0.70), (2, 0.10), (4, 0.15), (8, 0.05))
#: duration: (probability, log10 minutes low, log10 minutes high), Philly via Gavel
DURATION_PIECES: tuple[tuple[float, float, float], ...] = ((0.8, 1.5, 3.0), (0.2, 3.0, 4.0))
DEFAULT_LOAD = 0.9
#: min = ceil(max / MIN_DIVISOR)
MIN_DIVISOR = 4


@dataclass(frozen=True)
class Job:
    id: int
    arrival: float
    #: requested GPUs = workers at most (one GPU per worker)
    max: int
    min: int
    #: seconds the job runs at its requested size with nothing in its way
    duration: float
    #: the model class (speedup.ModelClass name)
    model: str
    #: the GPUs it asked for, when ``max`` allows more (None: ``max``)
    requested: int | None = None

    @property
    def request(self) -> int:
        return self.max if self.requested is None else self.requested

    @property
    def work(self) -> float:
        """GPU-seconds at the requested size."""
        return self.duration * self.request


def mean_gpus() -> float:
    return sum(g * p for g, p in GPU_COUNTS)


def mean_duration() -> float:
    """Expected seconds: a log-uniform piece over [10^a, 10^b] minutes has mean
    (10^b - 10^a) / ((b - a) ln 10) minutes."""
    return sum(p * 60 * (10**b - 10**a) / ((b - a) * math.log(10)) for p, a, b in DURATION_PIECES)


def arrival_rate(gpus: int, load: float = DEFAULT_LOAD) -> float:
    """Jobs per second that offer ``load`` x ``gpus`` GPU-seconds per second (GPU count and
    duration are drawn independently, so E[GPUs x duration] = E[GPUs] E[duration])."""
    return load * gpus / (mean_gpus() * mean_duration())


def min_workers(max_workers: int, divisor: int = MIN_DIVISOR) -> int:
    return max(1, math.ceil(max_workers / divisor))


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, float]]) -> Any:
    r = rng.random() * sum(w for _, w in weighted)
    for value, w in weighted:
        r -= w
        if r < 0:
            return value
    return weighted[-1][0]


def generate(
    gpus: int,
    jobs: int,
    seed: int,
    mix: Mapping[str, float],
    *,
    load: float = DEFAULT_LOAD,
    min_divisor: int = MIN_DIVISOR,
    max_factor: int = 1,
) -> list[Job]:
    """``jobs`` jobs for a cluster of ``gpus`` GPUs, deterministic per ``seed``.

    Each property has its own random stream, so changing the class mix or the load does not
    change which GPU counts and durations are drawn (a fair comparison across mixes).
    """
    if jobs < 1 or gpus < 1:
        raise ValueError("need at least one job and one GPU")
    streams = [random.Random(f"{seed}/{name}") for name in ("arrival", "gpus", "dur", "model")]
    arr_rng, gpu_rng, dur_rng, model_rng = streams
    rate = arrival_rate(gpus, load)
    classes = sorted(mix.items())
    out: list[Job] = []
    t = 0.0
    for i in range(jobs):
        if i:
            t += arr_rng.expovariate(rate)
        g = int(_pick(gpu_rng, GPU_COUNTS))
        lo, hi = _pick(dur_rng, [((a, b), p) for p, a, b in DURATION_PIECES])
        duration = 60.0 * 10 ** dur_rng.uniform(lo, hi)
        out.append(
            Job(
                id=i,
                arrival=t,
                max=g * max_factor,
                min=min_workers(g, min_divisor),
                duration=duration,
                model=str(_pick(model_rng, classes)),
                requested=g if max_factor != 1 else None,
            )
        )
    return out


def summary(jobs: Sequence[Job], gpus: int) -> dict[str, Any]:
    """What the trace looks like, next to what it was drawn from."""
    span = jobs[-1].arrival - jobs[0].arrival if len(jobs) > 1 else 0.0
    durations = [j.duration for j in jobs]
    counts = {g: sum(1 for j in jobs if j.request == g) / len(jobs) for g, _ in GPU_COUNTS}
    return {
        "jobs": len(jobs),
        "arrival_span_h": round(span / 3600, 2),
        "gpu_share": {str(g): round(v, 4) for g, v in counts.items()},
        "gpu_share_target": {str(g): p for g, p in GPU_COUNTS},
        "mean_gpus": round(statistics.fmean(j.request for j in jobs), 3),
        "mean_duration_h": round(statistics.fmean(durations) / 3600, 2),
        "mean_duration_h_target": round(mean_duration() / 3600, 2),
        "median_duration_h": round(statistics.median(durations) / 3600, 2),
        "offered_load": round(sum(j.work for j in jobs) / (gpus * span), 3) if span else None,
        "elastic_jobs": sum(1 for j in jobs if j.max > j.min),
        "work_share_of_elastic_jobs": round(
            sum(j.work for j in jobs if j.max > j.min) / sum(j.work for j in jobs), 3
        ),
        "models": {
            m: sum(1 for j in jobs if j.model == m) for m in sorted({j.model for j in jobs})
        },
    }
