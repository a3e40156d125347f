"""Dockerfile.trainer's recipe, checked without building it (`make test`).

Here: hadolint; the recipe's shape (multi-stage, pinned base, non-root numeric user, sshd
installed, entrypoint); the dependency step's `uv export` (locked TensorFlow/Horovod pins, no dev
tools) and the CUDA variant's swap of tensorflow-cpu for the same version. The image itself is
built by `make images` (buildah, images/) and run by `make test-images` (images/tests/); the
python:3.11-slim base tag and digests cannot be checked here (no registry).
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


def test_cuda_variant_swaps_tensorflow_for_the_same_version() -> None:
    """The CUDA variant replaces the locked tensorflow-cpu with tensorflow[and-cuda] of the same
    version, after Horovod's compile: the Horovod built against tensorflow-cpu then loads against
    the same C++ ABI, and both variants share every layer up to the swap (VARIANT declared
    after the compile)."""
    text = DOCKERFILE.read_text()
    (tf_version,) = re.findall(r"^ARG TF_VERSION=(\S+)$", text, re.M)
    (locked,) = re.findall(r"^tensorflow-cpu==(\S+) ", _export(), re.M)
    assert tf_version == locked
    compile_at = text.index('"horovod==${HOROVOD_VERSION}"')
    variant_at = text.index("ARG VARIANT=cpu")
    swap_at = text.index('pip install --no-cache-dir "tensorflow[and-cuda]==${TF_VERSION}"')
    assert compile_at < variant_at < swap_at
    assert text.index("pip uninstall -y tensorflow-cpu") < swap_at
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    first_use = next(i for i, line in enumerate(code) if "VARIANT" in line)
    assert code[first_use] == "ARG VARIANT=cpu"
