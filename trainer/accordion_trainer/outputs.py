"""What a training process writes out: the machine-readable `ACCORDION_*` lines, rank 0's log,
checkpoints and the final results."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import checkpoint, metrics
from .config import TrainConfig
from .store import LocalStore, S3Store, Store

#: Rank 0's own log lines, uploaded with the results as `logs/trainer.log` (bounded).
LOG_LINES: list[str] = []
LOG_LIMIT = 20_000


def keep_log(line: str) -> None:
    if len(LOG_LINES) < LOG_LIMIT:
        LOG_LINES.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}")


def emit(kind: str, doc: dict[str, Any]) -> None:
    line = f"ACCORDION_{kind} {json.dumps(doc, sort_keys=True)}"
    print(line, flush=True)
    if kind == "EVENT":
        keep_log(line)


def open_results(cfg: TrainConfig) -> Store:
    if cfg.results_dir is not None:
        return LocalStore(cfg.results_dir / cfg.results_prefix)
    if cfg.results is not None:
        from .staging import client_for

        client = client_for(cfg.results, store="RESULTS")
        return S3Store(client, cfg.results.bucket, cfg.results_prefix)
    return LocalStore(cfg.work_dir / "results" / cfg.results_prefix)


def write_checkpoint(store: Store, state: Any, model: Any, opt: Any) -> str:
    t0 = time.perf_counter()
    blob = checkpoint.serialize_weights(model.get_weights(), [v.numpy() for v in opt.variables])
    doc = {"epoch": int(state.epoch), "samples": int(state.samples), "history": state.history}
    cid = checkpoint.checkpoint_id(int(state.epoch), int(state.samples))
    doc["checkpoint"] = f"{store.uri}/{checkpoint.PREFIX}/{cid}"
    try:
        size = checkpoint.write(store, int(state.epoch), int(state.samples), blob, doc)
    except Exception as e:  # a failed upload must not kill training; the next one may succeed
        print(f"[trainer] checkpoint {cid} failed: {e!r}", file=sys.stderr, flush=True)
        return str(state.checkpoint)
    metrics.CHECKPOINTS.inc()
    metrics.CHECKPOINT_SECONDS.set(time.perf_counter() - t0)
    metrics.CHECKPOINT_BYTES.set(size)
    return str(doc["checkpoint"])


def save_results(cfg: TrainConfig, store: Store, model: Any, history: list[Any]) -> None:
    """Keras model (`model.keras`), SavedModel (`saved_model/`), `history.json`, and rank 0's
    log (`logs/trainer.log`)."""
    from tensorflow import keras

    # A clean copy without the Horovod optimizer wrapper, which is not serializable.
    clean = keras.models.clone_model(model)
    clean.set_weights(model.get_weights())
    clean.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    tmp = Path(tempfile.mkdtemp(prefix="accordion-results-"))
    try:
        clean.save(tmp / "model.keras")
        clean.export(str(tmp / "saved_model"))
        (tmp / "history.json").write_text(json.dumps(history, indent=1))
        (tmp / "logs").mkdir()
        (tmp / "logs" / "trainer.log").write_text("\n".join(LOG_LINES) + "\n")
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            store.put_file(str(path.relative_to(tmp)), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
