"""benchmarks.elastic.trace: the generator draws what it says it draws, the same per seed."""

import itertools
import math
import statistics

import pytest

from benchmarks.elastic.trace import (
    DURATION_PIECES,
    GPU_COUNTS,
    Job,
    arrival_rate,
    generate,
    mean_duration,
    min_workers,
    summary,
)

MIX = {"a": 0.5, "b": 0.5}


@pytest.fixture(scope="module")
def big() -> list[Job]:
    return generate(1024, 20000, seed=3, mix=MIX)


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    assert generate(64, 300, 1, MIX) == generate(64, 300, 1, MIX)
    assert generate(64, 300, 1, MIX) != generate(64, 300, 2, MIX)


def test_the_class_mix_does_not_change_sizes_durations_or_arrivals() -> None:
    one = generate(64, 300, 1, {"only": 1.0})
    two = generate(64, 300, 1, MIX)
    assert [(j.arrival, j.max, j.duration) for j in one] == [
        (j.arrival, j.max, j.duration) for j in two
    ]


def test_gpu_counts_match_the_philly_shares(big: list[Job]) -> None:
    for gpus, p in GPU_COUNTS:
        share = sum(1 for j in big if j.max == gpus) / len(big)
        assert share == pytest.approx(p, abs=0.01), gpus


def test_durations_match_the_log_uniform_pieces(big: list[Job]) -> None:
    minutes = [j.duration / 60 for j in big]
    long_share = sum(1 for m in minutes if m >= 10**3) / len(minutes)
    assert long_share == pytest.approx(DURATION_PIECES[1][0], abs=0.01)
    # within the short piece log10(minutes) is uniform on [1.5, 3]: its quartiles
    short = sorted(math.log10(m) for m in minutes if m < 10**3)
    for q in (0.25, 0.5, 0.75):
        assert short[int(q * len(short))] == pytest.approx(1.5 + 1.5 * q, abs=0.03)
    assert min(minutes) >= 10**1.5
    assert max(minutes) <= 10**4
    assert statistics.fmean(j.duration for j in big) == pytest.approx(mean_duration(), rel=0.05)


def test_poisson_arrivals_at_the_rate_of_the_offered_load(big: list[Job]) -> None:
    gaps = [b.arrival - a.arrival for a, b in itertools.pairwise(big)]
    rate = arrival_rate(1024)
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    # exponential: the standard deviation equals the mean
    assert statistics.stdev(gaps) == pytest.approx(statistics.fmean(gaps), rel=0.05)
    assert summary(big, 1024)["offered_load"] == pytest.approx(0.9, rel=0.1)


def test_arrival_rate_scales_with_the_cluster() -> None:
    assert arrival_rate(1024) == pytest.approx(16 * arrival_rate(64))
    assert arrival_rate(64, load=0.45) == pytest.approx(arrival_rate(64) / 2)


def test_elastic_bounds_rule(big: list[Job]) -> None:
    assert all(j.min == math.ceil(j.max / 4) for j in big)
    assert [min_workers(g) for g in (1, 2, 4, 8)] == [1, 1, 1, 2]
    assert [min_workers(g, 2) for g in (1, 2, 4, 8)] == [1, 1, 2, 4]
    assert all(j.work == j.duration * j.max for j in big[:100])


def test_max_factor_lets_a_job_grow_past_its_request() -> None:
    plain = generate(64, 200, 1, MIX)
    wide = generate(64, 200, 1, MIX, max_factor=2)
    for a, b in zip(plain, wide, strict=True):
        assert (b.request, b.min, b.max) == (a.max, a.min, 2 * a.max)
        assert b.work == a.work
