"""Every manifest under examples/ is accepted by the real apiserver with the CRDs installed
(schema and CEL rules, `kubectl apply --dry-run=server`): an example a user copies must not be
refused at apply. The ones that train are trained elsewhere (tests/e2e, tests/trainer); this
covers the rest, e.g. mnist-experiment-tpe.yaml and the real-cluster manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from accordion_dev.cluster import REPO, Cluster

EXAMPLES = sorted(
    p
    for p in (REPO / "examples").rglob("*.yaml")
    if any(
        (doc or {}).get("apiVersion", "").startswith("accordion.dev/")
        for doc in yaml.safe_load_all(p.read_text())
    )
)


def test_the_examples_are_found() -> None:
    names = {p.relative_to(REPO / "examples").as_posix() for p in EXAMPLES}
    assert {"mnist-experiment-tpe.yaml", "real-cluster/mnist-trainingrun.yaml"} <= names


@pytest.mark.parametrize(
    "path", EXAMPLES, ids=lambda p: p.relative_to(REPO / "examples").as_posix()
)
def test_example_is_accepted_by_the_apiserver(
    cluster: Cluster, trainingrun_crd: str, experiment_crd: str, namespace: str, path: Path
) -> None:
    out = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False
    )
    assert "created (server dry run)" in out, out
