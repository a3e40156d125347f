"""The chart's CRDs are the repository's crds/, unchanged apart from Helm's labels and the keep
annotation (crds/ itself is generated from the operator's models by accordion_operator.crd)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml
from chartkit import CHART, REPO, find, render

CHART_ONLY_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"}


def test_chart_copies_are_in_step_with_crds_and_dashboards() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "helm" / "generate_chart_files.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_every_source_crd_is_rendered_with_the_same_schema() -> None:
    sources = {
        d["metadata"]["name"]: d
        for p in sorted((REPO / "crds").glob("*.yaml"))
        for d in [yaml.safe_load(p.read_text())]
    }
    assert sources, "crds/ is empty"
    rendered = {c["metadata"]["name"]: c for c in find(render(), "CustomResourceDefinition")}
    assert rendered.keys() == sources.keys()
    for name, crd in rendered.items():
        meta = crd["metadata"]
        assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
        labels = {k: v for k, v in meta["labels"].items() if k not in CHART_ONLY_LABELS}
        assert labels == sources[name]["metadata"].get("labels", {})
        assert crd["spec"] == sources[name]["spec"], f"{name}: rendered spec differs from crds/"


def _generator_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "accordion_chart_generator", REPO / "helm" / "generate_chart_files.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_detects_stale_and_orphaned_copies(tmp_path: Path) -> None:
    generator = _generator_module()
    chart = tmp_path / "accordion"
    shutil.copytree(CHART / "files", chart / "files")
    assert generator.stale_files(chart) == []
    copy = chart / "files" / "crds" / "trainingruns.accordion.dev.yaml"
    copy.write_text(copy.read_text().replace("maxLength: 512", "maxLength: 511", 1))
    (chart / "files" / "crds" / "gone.accordion.dev.yaml").write_text("{}")
    (chart / "files" / "dashboards" / "accordion-runs.json").write_text("{}")
    assert sorted(generator.stale_files(chart)) == [
        "accordion/files/crds/gone.accordion.dev.yaml (no longer generated)",
        "accordion/files/crds/trainingruns.accordion.dev.yaml",
        "accordion/files/dashboards/accordion-runs.json",
    ]
