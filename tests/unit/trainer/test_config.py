"""The trainer's results root: the operator's ACCORDION_RESULTS_PATH when set (one folder per
run object), `<prefix>/<run>` for a standalone run."""

from __future__ import annotations

from pathlib import Path

from accordion_trainer.config import from_env
from accordion_trainer.outputs import open_results

OWN = "runs/team-a/mnist-5f0c3a9e8d21"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "ACCORDION_RUN_NAME": "mnist",
        "ACCORDION_RESULTS_PREFIX": "/runs/",
        "ACCORDION_WORK_DIR": str(tmp_path / "work"),
        **extra,
    }


def test_the_operators_results_path_is_the_results_root(tmp_path: Path) -> None:
    cfg = from_env(_env(tmp_path, ACCORDION_RESULTS_PATH=f"/{OWN}/"))
    assert cfg.results_prefix == OWN
    local = open_results(from_env(_env(tmp_path, ACCORDION_RESULTS_PATH=OWN)))
    local.put_bytes("history.json", b"[]")
    assert (tmp_path / "work" / "results" / OWN / "history.json").read_bytes() == b"[]"
    # in a bucket: the URI the trainer reports is the operator's status.resultsURI
    s3 = _env(
        tmp_path,
        ACCORDION_RESULTS_PATH=OWN,
        ACCORDION_RESULTS_ENDPOINT="minio:9000",
        ACCORDION_RESULTS_BUCKET="results",
    )
    assert open_results(from_env(s3)).uri == f"s3://results/{OWN}"


def test_without_it_results_go_to_prefix_and_run(tmp_path: Path) -> None:
    cfg = from_env(_env(tmp_path, ACCORDION_RESULTS_DIR=str(tmp_path / "res")))
    assert cfg.results_prefix == "runs/mnist"
    open_results(cfg).put_bytes("history.json", b"[]")
    assert (tmp_path / "res" / "runs" / "mnist" / "history.json").exists()
    assert from_env(_env(tmp_path, ACCORDION_RESULTS_PREFIX="")).results_prefix == "mnist"
