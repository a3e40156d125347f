"""Dockerfile.trainer, as far as a machine without a container engine can check it.

Verified here: hadolint; the recipe's shape (multi-stage, pinned base, non-root numeric user,
sshd installed, entrypoint); the dependency step's `uv export` (locked TensorFlow/Horovod pins, no
dev tools) and the CUDA variant's swap of tensorflow-cpu. Not verified: `docker build` itself
(Horovod's compile is exercised by trainer/build-horovod.sh with the same flags), the base image
tags/digests, and running the image.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.trainer"
CACHE = Path(os.environ.get("ACCORDION_CACHE", Path.home() / ".cache" / "accordion"))
UV = CACHE / "uv-0.13.8" / "bin" / "uv"


def _run(*argv: str | Path) -> str:
    r = subprocess.run(
        [str(a) for a in argv], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, f"{argv}: {r.stdout}\n{r.stderr}"
    return r.stdout


def test_hadolint_passes() -> None:
    _run(REPO / ".venv" / "bin" / "hadolint", DOCKERFILE)


def test_recipe_shape() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2, "multi-stage: build + runtime"
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base)
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "openssh-server" in text
    assert "HOROVOD_WITH_GLOO=1" in text
    assert "--no-build-isolation" in text
    assert "HOROVOD_VERSION=0.28.1" in text
    assert 'ENTRYPOINT ["python", "-m", "accordion_trainer"]' in text
    # The contract's ports: sshd for the launcher, /metrics for Prometheus.
    assert re.search(r"^EXPOSE 2222 9400$", text, re.M)


def _export(*extra: str) -> str:
    return _run(
        UV,
        "export",
        "--frozen",
        "--no-dev",
        "--no-emit-project",
        "--extra",
        "trainer",
        "--format",
        "requirements-txt",
        *extra,
    )


def test_locked_dependencies_are_the_trainer_pins() -> None:
    req = _export()
    assert re.search(r"^tensorflow-cpu==2\.15\.1 ", req, re.M)
    assert re.search(r"^numpy==1\.", req, re.M)
    assert "--hash=sha256:" in req
    for dev_tool in ("pytest", "ruff", "mypy", "hadolint"):
        assert not re.search(rf"^{dev_tool}==", req, re.M), dev_tool


def test_cuda_variant_swaps_tensorflow(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    (sed_expr,) = re.findall(r'sed -i "([^"]+)"', text)
    req = tmp_path / "requirements.txt"
    req.write_text(_export("--no-hashes"))
    subprocess.run(["sed", "-i", sed_expr.replace("${TF_VERSION}", "2.15.1"), str(req)], check=True)
    lines = req.read_text().splitlines()
    assert "tensorflow[and-cuda]==2.15.1" in lines
    assert not [line for line in lines if line.startswith("tensorflow-cpu")]
