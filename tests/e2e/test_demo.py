"""`make demo` end to end, non-interactively, on a private local cluster: real elastic training
through the operator on process nodes, grow and shrink mid-training, the experiment, Prometheus
scraping the operator and the trainer, and the dashboards rendered to PNG."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from accordion_dev.cluster import Cluster, ClusterConfig, free_port_block

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    base = free_port_block(first=20400)
    state = tmp_path / "cluster"
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "accordion_dev",
                "--state-dir",
                str(state),
                "--base-port",
                str(base),
                "demo",
                "--ci",
            ],
            capture_output=True,
            text=True,
            timeout=1400,
            cwd=REPO,
            check=False,
        )
        text = out.stdout + out.stderr
        (REPO / "artifacts").mkdir(exist_ok=True)
        (REPO / "artifacts" / "demo.log").write_text(text)
        assert out.returncode == 0, text[-4000:]
        acc = re.search(r"final validation accuracy: ([0-9.]+)", text)
        assert acc, text[-3000:]
        assert float(acc.group(1)) >= 0.85
        # the run really grew to 3 workers and shrank to 1 while training
        assert "grow to 3 workers" not in text  # no timeout message
        assert "best run" in text
        for metric in (
            "accordion_trainer_samples_per_second",
            "accordion_run_workers_desired",
            "accordion_trainer_world_size",
        ):
            m = re.search(rf"{metric}: (\d+) series", text)
            assert m, f"{metric} missing"
            assert int(m.group(1)) >= 1, f"Prometheus scraped no {metric}"
        for name in ("accordion-cluster", "accordion-runs"):
            png = REPO / "artifacts" / "dashboards" / f"{name}.png"
            assert png.stat().st_size > 10_000
    finally:
        Cluster(ClusterConfig(state_dir=state, base_port=base)).down()
