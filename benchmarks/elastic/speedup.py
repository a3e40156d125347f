"""The speedup model the trace simulator uses, fitted to measurements (issue 20, part 1).

The model, per model class ``c``::

    S_c(n) = n / (1 + alpha_c * (n - 1))     throughput at n workers, in one worker's units
    E_c(n) = S_c(n) / n                      efficiency ("busy" share of each allocated GPU)

plus a fixed pause with zero throughput per rescale: ``grow_pause_s`` when workers are added,
``shrink_pause_s`` when they are removed. ``alpha`` is Amdahl's serial fraction (the share of a
step that does not get shorter with more workers); it makes ``n / S(n)``, a worker's time per
sample, a straight line in ``n - 1``, so the fit is linear least squares on that line.

Two sources of parameters, kept apart because they disagree by orders of magnitude:

* **measured**: this project's trainer (``mnist-cnn``, elastic Horovod on TensorFlow CPU) on the
  2-core reference machine, from the committed ``benchmarks/results/trainer_throughput.json``
  (np=1 and np=2 epoch rates) and ``trainer_rescale*.json`` (seconds from a host-list change to
  the first step at the new size). Those runs split the *same two cores* between the workers
  (``ACCORDION_TF_THREADS = cores // np``), so the ideal np=2 rate equals the np=1 rate and any
  shortfall is what the second worker costs (allreduce, Horovod's background thread, two Python
  processes on two shared cores). Read as per-GPU scaling this is pessimistic: it assumes
  TensorFlow's two threads are worth two single-thread workers and it counts CPU contention as
  communication. It says nothing about real GPUs, where a worker has its own device and NCCL.
* **published**: Horovod's benchmark (Sergeev & Del Balso, arXiv:1802.05799, 2018, and Horovod's
  ``docs/benchmarks.rst``): on 128 servers of 4 Pascal GPUs (512 GPUs, 25 Gbit/s RoCE) 90 %
  scaling efficiency for Inception V3 and ResNet-101 and 68 % for VGG-16; the earlier README
  figure on 32 servers (128 GPUs): 90 %, 90 % and 79 %. These are throughput (images/s) at a
  fixed per-GPU batch, not time to accuracy (what Pollux calls statistical efficiency).
  Rescale pauses are not published for Horovod elastic; the published classes use the
  measured pauses.

``python -m benchmarks.elastic.speedup`` prints the fit; ``benchmarks.elastic_trace`` writes it
with its inputs to ``benchmarks/results/speedup_model.json``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"

#: The trainer's throughput benchmark: variants at np=1 and np=2 with the default commit interval.
THROUGHPUT_FILE = "trainer_throughput.json"
THROUGHPUT_VARIANTS = {1: "trainer_np1_commit_auto", 2: "trainer_np2_commit_auto"}
#: The rescale benchmark (current settings) and its baseline (before pre-tracing, 1 s poll).
RESCALE_FILES = ("trainer_rescale.json", "trainer_rescale_baseline.json")

#: Published scaling efficiency, (GPUs, efficiency) per model: Horovod's benchmark (see above).
PUBLISHED_EFFICIENCY: dict[str, tuple[tuple[int, float], ...]] = {
    "resnet101": ((128, 0.90), (512, 0.90)),
    "inception-v3": ((128, 0.90), (512, 0.90)),
    "vgg16": ((128, 0.79), (512, 0.68)),
}
PUBLISHED_SOURCE = (
    "Sergeev & Del Balso, Horovod, arXiv:1802.05799 (2018); horovod docs/benchmarks.rst: "
    "512 GPUs (128 x 4 Pascal, 25 Gbit/s RoCE) 90% Inception V3 / ResNet-101, 68% VGG-16; "
    "README on 128 GPUs (32 x 4): 90%, 90%, 79%"
)
MEASURED_CLASS = "mnist-cnn-process-node"


@dataclass(frozen=True)
class ModelClass:
    """A model class of the simulator: its scaling and what a rescale costs it."""

    name: str
    alpha: float
    grow_pause_s: float
    shrink_pause_s: float

    def speedup(self, n: int) -> float:
        """Throughput at ``n`` workers in units of one worker's (0 for no workers)."""
        return n / (1.0 + self.alpha * (n - 1)) if n > 0 else 0.0

    def efficiency(self, n: int) -> float:
        return self.speedup(n) / n if n > 0 else 0.0


@dataclass(frozen=True)
class AmdahlFit:
    """Least squares fit of ``time per sample per worker = (1 + alpha (n - 1)) / x1``."""

    #: one worker's throughput (samples/s; 1 where efficiencies were fitted)
    x1: float
    alpha: float
    #: standard error of alpha (delta method on the linear fit; nan with too few points)
    alpha_stderr: float
    points: int


def fit_amdahl(
    workers: Sequence[int],
    rates: Sequence[float],
    *,
    shared_host: bool = False,
    x1: float | None = None,
) -> AmdahlFit:
    """Fit ``alpha`` (and ``x1`` unless given) to throughputs measured at ``workers``.

    ``rates`` are total throughputs. On a GPU cluster each worker brings its own device, so
    ``rate(n) = x1 * S(n)`` and ``n / rate`` is linear in ``n - 1``. With ``shared_host`` the
    workers split one host's fixed compute, so ``rate(n) = x1 * S(n) / n`` and ``1 / rate`` is.
    With ``x1`` given (efficiencies: ``x1 = 1``) the line's intercept is fixed at ``1 / x1``.
    """
    n = np.asarray(workers, dtype=float)
    r = np.asarray(rates, dtype=float)
    if n.shape != r.shape or n.size == 0 or np.any(r <= 0) or np.any(n < 1):
        raise ValueError("need positive rates at one or more worker counts")
    y = (1.0 / r) if shared_host else (n / r)  # seconds per sample per worker's share
    x = n - 1.0
    if x1 is not None:
        a = 1.0 / x1
        if not np.any(x):
            raise ValueError("a fixed-intercept fit needs a point with more than one worker")
        b = float(np.dot(x, y - a) / np.dot(x, x))
        resid = y - a - b * x
        dof = n.size - 1
        se_b = (
            math.sqrt(float(np.dot(resid, resid)) / dof / float(np.dot(x, x))) if dof else math.nan
        )
        return AmdahlFit(x1=x1, alpha=b / a, alpha_stderr=se_b / a, points=int(n.size))
    if len(set(workers)) < 2:
        raise ValueError("fitting x1 and alpha needs two or more distinct worker counts")
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    a, b = float(coef[0]), float(coef[1])
    resid = y - design @ coef
    dof = n.size - 2
    stderr = math.nan
    if dof > 0:
        sigma2 = float(np.dot(resid, resid)) / dof
        cov = sigma2 * np.linalg.inv(design.T @ design)
        # alpha = b / a: gradient (-b / a^2, 1 / a)
        grad = np.array([-b / a**2, 1.0 / a])
        stderr = math.sqrt(float(grad @ cov @ grad))
    return AmdahlFit(x1=1.0 / a, alpha=b / a, alpha_stderr=stderr, points=int(n.size))


@dataclass(frozen=True)
class PauseFit:
    """A fixed pause: the least squares constant (the mean) of the measured pauses."""

    seconds: float
    stdev: float
    samples: tuple[float, ...]


def fit_pause(samples: Sequence[float]) -> PauseFit:
    if not samples:
        raise ValueError("no pause measurements")
    sd = statistics.stdev(samples) if len(samples) > 1 else math.nan
    return PauseFit(seconds=statistics.fmean(samples), stdev=sd, samples=tuple(samples))


# --- the committed measurements ------------------------------------------------------------------


def load_measurements(results: Path = RESULTS) -> dict[str, Any]:
    """The raw numbers the fit uses, with where each comes from."""
    thr = json.loads((results / THROUGHPUT_FILE).read_text())
    rates = {
        n: [float(v) for v in thr["raw_rates"][name]] for n, name in THROUGHPUT_VARIANTS.items()
    }
    grows: list[float] = []
    shrinks: list[float] = []
    for name in RESCALE_FILES:
        for change in json.loads((results / name).read_text())["changes"]:
            if change["op"] == "grow":
                grows.append(float(change["change_to_first_step_s"]))
            elif change["op"] == "shrink":
                shrinks.append(float(change["change_to_first_step_s"]))
    return {
        "throughput": {
            "file": f"benchmarks/results/{THROUGHPUT_FILE}",
            "when": thr.get("when"),
            "what": "epoch training rates (samples/s, first epoch excluded) of the trainer at "
            "np workers sharing the machine's cores (ACCORDION_TF_THREADS = cores // np)",
            "cores": thr.get("machine", {}).get("cpus"),
            "variants": {str(n): THROUGHPUT_VARIANTS[n] for n in rates},
            "rates_by_workers": {str(n): v for n, v in rates.items()},
        },
        "rescale": {
            "files": [f"benchmarks/results/{f}" for f in RESCALE_FILES],
            "what": "seconds from the host-list change to the first training step at the new "
            "size (change_to_first_step_s), counted as zero throughput for the whole job",
            "grow_s": grows,
            "shrink_s": shrinks,
        },
    }


def fit_measured(measurements: Mapping[str, Any]) -> tuple[ModelClass, dict[str, Any]]:
    rates = measurements["throughput"]["rates_by_workers"]
    workers = [int(n) for n, vs in rates.items() for _ in vs]
    values = [v for vs in rates.values() for v in vs]
    thr = fit_amdahl(workers, values, shared_host=True)
    medians = {n: statistics.median(vs) for n, vs in rates.items()}
    grow = fit_pause(measurements["rescale"]["grow_s"])
    shrink = fit_pause(measurements["rescale"]["shrink_s"])
    cls = ModelClass(MEASURED_CLASS, thr.alpha, grow.seconds, shrink.seconds)
    detail = {
        "throughput_fit": asdict(thr),
        "median_rates": medians,
        # the same model through the medians alone: how much the noisy epochs move alpha
        "alpha_from_medians": (
            medians["1"] / medians["2"] - 1.0 if "1" in medians and "2" in medians else None
        ),
        "grow_pause": asdict(grow),
        "shrink_pause": asdict(shrink),
    }
    return cls, detail


def fit_published(grow_pause_s: float, shrink_pause_s: float) -> dict[str, ModelClass]:
    out = {}
    for name, points in PUBLISHED_EFFICIENCY.items():
        fit = fit_amdahl([n for n, _ in points], [n * e for n, e in points], x1=1.0)
        out[name] = ModelClass(name, fit.alpha, grow_pause_s, shrink_pause_s)
    return out


@dataclass(frozen=True)
class SpeedupModel:
    """Every class the simulator knows, and the class mixes a trace draws from."""

    classes: dict[str, ModelClass]
    mixes: dict[str, dict[str, float]]
    detail: dict[str, Any]

    def mix(self, name: str) -> dict[str, float]:
        return self.mixes[name]


def build_model(results: Path = RESULTS) -> SpeedupModel:
    """Fit everything from the committed measurements and the published figures."""
    meas = load_measurements(results)
    measured, detail = fit_measured(meas)
    published = fit_published(measured.grow_pause_s, measured.shrink_pause_s)
    classes = {measured.name: measured, **published}
    mixes = {
        "measured": {measured.name: 1.0},
        "published": {name: 1.0 / len(published) for name in published},
    }
    return SpeedupModel(
        classes=classes,
        mixes=mixes,
        detail={
            "model": "S(n) = n / (1 + alpha (n - 1)); zero throughput for grow_pause_s / "
            "shrink_pause_s after each rescale",
            "measurements": meas,
            "measured_fit": detail,
            "published_source": PUBLISHED_SOURCE,
            "published_points": {k: [list(p) for p in v] for k, v in PUBLISHED_EFFICIENCY.items()},
        },
    )


def model_document(model: SpeedupModel) -> dict[str, Any]:
    """What benchmarks/results/speedup_model.json holds."""
    return {
        **model.detail,
        "classes": {
            name: {
                **asdict(c),
                "efficiency": {str(n): round(c.efficiency(n), 4) for n in (1, 2, 4, 8, 64)},
            }
            for name, c in model.classes.items()
        },
        "mixes": model.mixes,
    }


def main() -> None:
    print(json.dumps(model_document(build_model()), indent=1))


if __name__ == "__main__":
    main()
