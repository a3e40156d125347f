"""The trainer's metrics are exactly the ones docs/metrics.md documents (names, types)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

from accordion_trainer import metrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def test_metrics_match_the_documentation() -> None:
    assert metrics.SAMPLES is not None  # imported for its registrations
    exported = {}
    for family in REGISTRY.collect():
        if family.name.startswith("accordion_trainer_"):
            suffix = "_total" if family.type == "counter" else ""
            exported[family.name + suffix] = family.type
    documented = dict(
        re.findall(r"^\| `(accordion_trainer_[a-z_]+)` \| (\w+) \|", DOC.read_text(), re.M)
    )
    assert exported == documented
    for name in exported:
        assert not re.search(r"_(ms|milliseconds|mb|kb)(_|$)", name), f"{name}: not a base unit"
