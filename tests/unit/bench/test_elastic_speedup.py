"""benchmarks.elastic.speedup: the model, and that its fit recovers known parameters."""

import math
import random

import pytest

from benchmarks.elastic.speedup import (
    MEASURED_CLASS,
    ModelClass,
    build_model,
    fit_amdahl,
    fit_pause,
)


def test_speedup_is_amdahl() -> None:
    c = ModelClass("x", alpha=0.1, grow_pause_s=5, shrink_pause_s=1)
    assert c.speedup(0) == 0
    assert c.speedup(1) == 1
    assert c.speedup(4) == pytest.approx(4 / 1.3)
    assert c.efficiency(4) == pytest.approx(1 / 1.3)
    assert [c.speedup(n) for n in range(1, 9)] == sorted(c.speedup(n) for n in range(1, 9))
    assert ModelClass("linear", 0.0, 0, 0).speedup(8) == 8


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.3, 1.5])
def test_fit_recovers_alpha_and_x1_exactly(alpha: float) -> None:
    ns = [1, 2, 3, 4, 8]
    rates = [1000.0 * ModelClass("t", alpha, 0, 0).speedup(n) for n in ns]
    fit = fit_amdahl(ns, rates)
    assert fit.alpha == pytest.approx(alpha, abs=1e-9)
    assert fit.x1 == pytest.approx(1000.0)


def test_fit_recovers_alpha_from_noisy_repeats() -> None:
    rng = random.Random(7)  # noqa: S311 - measurement noise, not secrets
    true = ModelClass("t", 0.12, 0, 0)
    ns = [n for n in (1, 2, 4, 8, 16) for _ in range(30)]
    rates = [500.0 * true.speedup(n) * rng.gauss(1.0, 0.03) for n in ns]
    fit = fit_amdahl(ns, rates)
    assert fit.alpha == pytest.approx(0.12, rel=0.1)
    assert fit.x1 == pytest.approx(500.0, rel=0.03)
    assert 0 < fit.alpha_stderr < 0.02
    assert abs(fit.alpha - 0.12) < 4 * fit.alpha_stderr


def test_fit_on_a_shared_host_divides_the_host_between_workers() -> None:
    # two workers on the same cores: the ideal total rate is the one-worker rate
    true = ModelClass("t", 0.4, 0, 0)
    rates = [800.0 * true.speedup(n) / n for n in (1, 2, 3)]
    fit = fit_amdahl([1, 2, 3], rates, shared_host=True)
    assert fit.alpha == pytest.approx(0.4)
    assert fit.x1 == pytest.approx(800.0)


def test_fit_of_efficiencies_with_a_fixed_intercept() -> None:
    true = ModelClass("t", 0.001, 0, 0)
    points = [(128, true.efficiency(128)), (512, true.efficiency(512))]
    fit = fit_amdahl([n for n, _ in points], [n * e for n, e in points], x1=1.0)
    assert fit.alpha == pytest.approx(0.001)


def test_fit_refuses_what_it_cannot_fit() -> None:
    with pytest.raises(ValueError, match="distinct"):
        fit_amdahl([2, 2], [1.0, 1.1])
    with pytest.raises(ValueError, match="positive"):
        fit_amdahl([1, 2], [1.0, 0.0])


def test_pause_is_the_mean() -> None:
    p = fit_pause([4.0, 6.0, 5.0])
    assert p.seconds == 5.0
    assert p.stdev == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no pause"):
        fit_pause([])


def test_model_from_the_committed_measurements() -> None:
    model = build_model()
    measured = model.classes[MEASURED_CLASS]
    meas = model.detail["measurements"]
    # what was fitted is what was measured: np=1 and np=2 epoch rates, 4 grows and 4 shrinks
    assert set(meas["throughput"]["rates_by_workers"]) == {"1", "2"}
    assert measured.grow_pause_s == pytest.approx(
        sum(meas["rescale"]["grow_s"]) / len(meas["rescale"]["grow_s"])
    )
    assert 0 < measured.shrink_pause_s < measured.grow_pause_s
    assert 0 < measured.alpha < 2
    # the published classes scale almost linearly at the trace's sizes (<= 8 GPUs)
    for name in ("resnet101", "inception-v3", "vgg16"):
        assert model.classes[name].efficiency(8) > 0.99
        assert model.classes[name].efficiency(512) < 0.95
    assert math.isclose(sum(model.mixes["published"].values()), 1.0)
