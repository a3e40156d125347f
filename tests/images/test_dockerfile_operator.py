"""Dockerfile.operator, as far as a machine without a container engine can check it.

Verified here: hadolint; the recipe's shape (multi-stage, pinned base, non-root numeric user,
entrypoint); and that its dependency step, `uv export --frozen --no-dev --no-emit-project --format
pylock.toml` from uv.lock, installs with hashes into a fresh virtual environment in which every
operator module imports and TensorFlow does not exist. The install is offline and needs only what
`make deps` (`uv sync --frozen`) put into uv's cache: a pylock.toml names each wheel by URL and
hash, which is how `uv sync` cached it. (A requirements.txt export would need the index's
simple-API pages, which `uv sync --frozen` never fetches: on an empty cache that failed, issue 22.)
Not verified: `docker build` itself, the base image tag/digest, and running the image.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.operator"
CACHE = Path(os.environ.get("ACCORDION_CACHE", Path.home() / ".cache" / "accordion"))
UV = CACHE / "uv-0.13.8" / "bin" / "uv"


def _run(*argv: str | Path, cwd: Path = REPO, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, f"{argv}: {r.stdout}\n{r.stderr}"
    return r.stdout


def test_hadolint_passes() -> None:
    _run(REPO / ".venv" / "bin" / "hadolint", DOCKERFILE)


def test_recipe_shape() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2, "multi-stage: build + runtime"
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert user == "10001:10001"  # numeric: runAsNonRoot can verify it; matches the chart
    assert text.rstrip().endswith('ENTRYPOINT ["python", "-m", "accordion_operator"]')
    assert "--require-hashes" in text
    commands = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "--extra" not in commands  # no trainer extra: no TensorFlow in the operator image


def _export(tmp_path: Path) -> Path:
    lock = tmp_path / "pylock.toml"
    _run(UV, "export", "--frozen", "--no-dev", "--no-emit-project", "--format", "pylock.toml",
         "--output-file", lock, "-q")  # fmt: skip
    return lock


def test_dockerfile_installs_the_same_export() -> None:
    text = DOCKERFILE.read_text()
    assert "--format pylock.toml" in text
    assert re.search(r"uv pip install [^\n]*--require-hashes", text)


def test_exported_requirements_are_the_operator_closure_only(tmp_path: Path) -> None:
    packages = tomllib.loads(_export(tmp_path).read_text())["packages"]
    names = {p["name"] for p in packages}
    # minio: the storage preflight lists a run's buckets before its pods start
    for direct in ("kopf", "kr8s", "pydantic", "prometheus-client", "optuna", "pyyaml", "minio"):
        assert direct in names
    for excluded in ("tensorflow", "tensorflow-cpu", "horovod", "pytest", "ruff", "mypy"):
        assert excluded not in names
    # every artefact is pinned by hash: --require-hashes refuses anything else
    for p in packages:
        artefacts = [*p.get("wheels", []), *([p["sdist"]] if "sdist" in p else [])]
        assert artefacts, p["name"]
        assert all(a["hashes"]["sha256"] for a in artefacts), p["name"]


def test_exported_requirements_install_and_import_the_operator(tmp_path: Path) -> None:
    lock = _export(tmp_path)
    venv = tmp_path / "venv"
    _run(UV, "venv", "-q", "--offline", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    _run(UV, "pip", "install", "-q", "--offline", "--no-deps", "--require-hashes",
         "--python", python, "-r", lock)  # fmt: skip
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO / "operator")}
    probe = (
        "import importlib, pkgutil, accordion_operator as p\n"
        "mods = [m.name for m in pkgutil.walk_packages(p.__path__, 'accordion_operator.')]\n"
        "for m in mods:\n"
        "    if not m.endswith('.__main__'):\n"
        "        importlib.import_module(m)\n"
        "import importlib.util as u\n"
        "assert u.find_spec('tensorflow') is None\n"
        "print(len(mods))\n"
    )
    imported = int(_run(python, "-c", probe, cwd=tmp_path, env=env).strip())
    assert imported >= 8
