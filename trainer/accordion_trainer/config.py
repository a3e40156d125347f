"""The trainer's configuration, read from `ACCORDION_*` variables (docs/contract.md).

The same variables drive a standalone run (`python -m accordion_trainer run` sets them) and a
pod, so user code sees identical hyperparameters either way.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Reason, TrainerError
from .models import ModelSource


@dataclass(frozen=True)
class S3Location:
    endpoint: str
    bucket: str
    prefix: str
    secure: bool


@dataclass(frozen=True)
class TrainConfig:
    run_name: str
    model: ModelSource
    hparams: dict[str, Any]
    epochs: int
    batch_size: int
    checkpoint_epochs: int
    #: Local directory holding the (staged) dataset.
    data_dir: Path
    #: Local results root (standalone); None means results go to `results` in S3.
    results_dir: Path | None
    results: S3Location | None
    data: S3Location | None
    work_dir: Path
    learning_rate: float
    #: Commit the elastic state every N batches; 0 = auto (about every 0.2 s of steps).
    commit_batches: int
    seed: int = 0
    #: `ACCORDION_RESULTS_PREFIX`: results go under `<bucket or dir>/<prefix>/<run>/`...
    prefix: str = ""
    #: ... unless `ACCORDION_RESULTS_PATH` names the folder: the operator sets it to one unique
    #: per run object (`<prefix>/<namespace>/<run>-<uid digits>`), so that a run resumes only
    #: its own checkpoints, never those of an earlier run of the same name.
    results_path: str = ""

    @property
    def results_prefix(self) -> str:
        if self.results_path:
            return self.results_path.strip("/")
        base = self.prefix.strip("/")
        return f"{base}/{self.run_name}" if base else self.run_name


def _int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = env.get(key, "")
    try:
        value = int(raw) if raw else default
    except ValueError as e:
        raise TrainerError(Reason.TrainingError, f"{key}={raw!r} is not an integer") from e
    if value < minimum:
        raise TrainerError(Reason.TrainingError, f"{key}={value} is below {minimum}")
    return value


def _json(env: Mapping[str, str], key: str, default: Any, reason: Reason) -> Any:
    raw = env.get(key, "")
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError as e:
        raise TrainerError(reason, f"{key} is not valid JSON: {e}") from e


def _s3(env: Mapping[str, str], kind: str) -> S3Location | None:
    endpoint = env.get(f"ACCORDION_{kind}_ENDPOINT", "")
    bucket = env.get(f"ACCORDION_{kind}_BUCKET", "")
    if not endpoint or not bucket:
        return None
    secure = env.get(f"ACCORDION_{kind}_SECURE", "false").lower() in ("1", "true", "yes")
    return S3Location(endpoint, bucket, env.get(f"ACCORDION_{kind}_PREFIX", ""), secure)


def model_source(spec: Any, code_dir: Path | None = None) -> ModelSource:
    """`ACCORDION_MODEL`: `{"builtin": name}`, `{"path": ...}` or `{"bucketObject": ...}` (the
    worker downloads the object into `code_dir` first)."""
    if isinstance(spec, str):
        spec = {"builtin": spec}
    if not isinstance(spec, dict):
        raise TrainerError(Reason.ModelInvalid, f"ACCORDION_MODEL must be an object: {spec!r}")
    if spec.get("builtin"):
        return ModelSource(builtin=str(spec["builtin"]))
    if spec.get("path"):
        return ModelSource(path=Path(spec["path"]))
    if spec.get("bucketObject"):
        name = Path(str(spec["bucketObject"])).name
        return ModelSource(path=(code_dir or Path(".")) / name)
    raise TrainerError(Reason.ModelInvalid, f"ACCORDION_MODEL names no model: {spec!r}")


def default_scratch(env: Mapping[str, str]) -> Path:
    """Per-run, per-host scratch: pods on a process node share one filesystem."""
    host = env.get("HOROVOD_HOSTNAME") or env.get("ACCORDION_POD_IP") or "local"
    run = env.get("ACCORDION_RUN_NAME", "run")
    return Path(tempfile.gettempdir()) / "accordion" / run / host


def from_env(env: Mapping[str, str] | None = None) -> TrainConfig:
    env = os.environ if env is None else env
    work = Path(env.get("ACCORDION_WORK_DIR") or default_scratch(env))
    hparams = _json(env, "ACCORDION_HPARAMS", {}, Reason.TrainingError)
    if not isinstance(hparams, dict):
        raise TrainerError(Reason.TrainingError, "ACCORDION_HPARAMS must be a JSON object")
    model = model_source(
        _json(env, "ACCORDION_MODEL", {"builtin": "mnist-cnn"}, Reason.ModelInvalid),
        work / "code",
    )
    results_dir = env.get("ACCORDION_RESULTS_DIR")
    try:
        raw_lr: Any = hparams.get("learning_rate", hparams.get("lr", 0.001))
        lr = float(raw_lr)
    except (TypeError, ValueError) as e:
        raise TrainerError(Reason.TrainingError, f"bad learning_rate: {e}") from e
    return TrainConfig(
        run_name=env.get("ACCORDION_RUN_NAME", "run"),
        model=model,
        hparams=hparams,
        epochs=_int(env, "ACCORDION_EPOCHS", 5, 1),
        batch_size=_int(env, "ACCORDION_BATCH_SIZE", 64, 1),
        checkpoint_epochs=_int(env, "ACCORDION_CHECKPOINT_EPOCHS", 1, 0),
        data_dir=Path(env.get("ACCORDION_DATA_DIR") or work / "data"),
        results_dir=Path(results_dir) if results_dir else None,
        results=_s3(env, "RESULTS"),
        data=_s3(env, "DATA"),
        work_dir=work,
        learning_rate=lr,
        commit_batches=_int(env, "ACCORDION_COMMIT_BATCHES", 0, 0),
        seed=_int(env, "ACCORDION_SEED", 0),
        prefix=env.get("ACCORDION_RESULTS_PREFIX", ""),
        results_path=env.get("ACCORDION_RESULTS_PATH", ""),
    )
