"""The training process: one per Horovod slot, started by `horovodrun` (standalone or launcher).

Elastic loop (hvd.elastic.run + KerasState) with these deliberate choices:
- the optimizer is built before the state exists, or a worker joining late deadlocks in the
  optimizer-variable broadcast;
- one callback updates batch/sample counters and then commits, so the committed batch never lags;
- resume is batch-exact: the state carries `samples` (position in the epoch's global order) and
  each (re)start feeds only the samples not yet consumed, re-sharded for the current world size;
- the learning rate is `lr * world size` (Horovod's recommendation) and is re-set on every reset.

Rank 0 prints machine-readable lines for the launcher (`ACCORDION_PROGRESS {json}`) and for tests
and benchmarks (`ACCORDION_EVENT {json}`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint, metrics
from .config import TrainConfig, from_env
from .data import Dataset, epoch_order, load_dir, shard_indices, to_dataset
from .errors import Reason, TrainerError
from .models import build, resolve
from .store import LocalStore, S3Store, Store

HISTORY_LIMIT = 50
#: History fields that are timings, not model metrics (kept out of `status.training.metrics`).
TIMING_KEYS = frozenset({"seconds", "trainSeconds", "stepSeconds"})
PROGRESS_MIN_INTERVAL_S = 2.0


#: Rank 0's own log lines, uploaded with the results as `logs/trainer.log` (bounded).
LOG_LINES: list[str] = []
LOG_LIMIT = 20_000


def _keep(line: str) -> None:
    if len(LOG_LINES) < LOG_LIMIT:
        LOG_LINES.append(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}")


def emit(kind: str, doc: dict[str, Any]) -> None:
    line = f"ACCORDION_{kind} {json.dumps(doc, sort_keys=True)}"
    print(line, flush=True)
    if kind == "EVENT":
        _keep(line)


def scaled_lr(base: float, world_size: int) -> float:
    """Horovod's rule: the effective batch grows with the world, so does the step size."""
    return base * max(1, world_size)


#: With ACCORDION_COMMIT_BATCHES=0 (auto), commit about this often. A commit copies the weights
#: and broadcasts the host-update check (~1-3 ms here); at every batch that cost 20% of a 10 ms
#: step. Host changes are noticed at commits, so this also bounds that delay.
COMMIT_TARGET_S = 0.2
COMMIT_MAX_BATCHES = 100


def decide_commit_every(step_seconds: float, target_s: float = COMMIT_TARGET_S) -> int:
    """Batches between commits so that commits happen every ~`target_s` (pure)."""
    if step_seconds <= 0:
        return 1
    return max(1, min(COMMIT_MAX_BATCHES, int(target_s / step_seconds)))


def weights_checksum(weights: list[Any]) -> float:
    return float(sum(float(np.abs(w).sum()) for w in weights))


def open_results(cfg: TrainConfig) -> Store:
    if cfg.results_dir is not None:
        return LocalStore(cfg.results_dir / cfg.results_prefix)
    if cfg.results is not None:
        from .staging import client_for

        client = client_for(cfg.results)
        return S3Store(client, cfg.results.bucket, cfg.results_prefix)
    return LocalStore(cfg.work_dir / "results" / cfg.results_prefix)


def make_optimizer(name: str, lr: float) -> Any:
    from tensorflow import keras

    table = {
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
    }
    if name.lower() not in table:
        raise TrainerError(Reason.ModelInvalid, f"unknown optimizer {name!r}")
    return table[name.lower()](learning_rate=lr)


def load_data(cfg: TrainConfig, code: Any) -> Dataset:
    if code.load_data is None:
        return load_dir(cfg.data_dir)
    try:
        out = code.load_data(str(cfg.data_dir), cfg.hparams)
    except TrainerError:
        raise
    except Exception as e:
        raise TrainerError(Reason.DataUnreadable, f"load_data failed: {e!r}") from e
    if isinstance(out, Dataset):
        return out
    if isinstance(out, dict):
        return to_dataset(out, where="load_data()")
    if isinstance(out, tuple) and len(out) == 2:  # ((x_train, y_train), (x_val, y_val))
        (xt, yt), (xv, yv) = out
        return to_dataset({"x_train": xt, "y_train": yt, "x_val": xv, "y_val": yv}, "load_data()")
    raise TrainerError(Reason.DataUnreadable, "load_data() must return a dict or two pairs")


def _configure_threads() -> None:
    import tensorflow as tf

    threads = int(os.environ.get("ACCORDION_TF_THREADS", "0") or 0)
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads))


def train(cfg: TrainConfig, t_boot: float | None = None) -> None:
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf
    from horovod.common.exceptions import HostsUpdatedInterrupt

    t_imported = time.time()
    _configure_threads()
    hvd.init()
    t_init = time.time()

    def rank0() -> bool:
        # Evaluated each time: ranks are re-assigned on every elastic reset (and horovodrun's
        # `[N]` output prefix keeps the rank a process was started with, so it is no guide).
        return bool(hvd.rank() == 0)

    def log(msg: str) -> None:
        if rank0():
            print(f"[trainer] {msg}", flush=True)
            _keep(msg)

    port = int(os.environ.get("ACCORDION_METRICS_PORT", "0") or 0)
    if port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.serve(port, addr=os.environ.get("HOROVOD_HOSTNAME", "127.0.0.1"))

    code = resolve(cfg.model, cfg.work_dir)
    ds = load_data(cfg, code)
    model = build(code, cfg.hparams)
    optimizer = make_optimizer(
        str(cfg.hparams.get("optimizer", "adam")), scaled_lr(cfg.learning_rate, hvd.size())
    )
    opt = hvd.DistributedOptimizer(optimizer)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=opt, metrics=["accuracy"])
    opt.build(model.trainable_variables)
    if os.environ.get("ACCORDION_PRETRACE", "1") != "0":
        _pretrace(model, ds, cfg.batch_size)

    store = open_results(cfg)
    resumed: dict[str, Any] = {"epoch": 0, "samples": 0, "history": []}
    if rank0():
        loaded = checkpoint.load_newest(store, log=log)
        if loaded is not None:
            mw, ow = checkpoint.deserialize_weights(loaded.weights)
            model.set_weights(mw)
            for var, value in zip(opt.variables, ow, strict=True):
                var.assign(value)
            resumed = loaded.state
            log(f"resumed from checkpoint {loaded.manifest.id}")
            emit("EVENT", {"event": "resume", "checkpoint": loaded.manifest.id, **_pos(resumed)})

    # Every rank (not only 0): where a (re)joining worker's startup time goes.
    print(
        "ACCORDION_BOOT "
        + json.dumps(
            {
                "rank": hvd.rank(),
                "host": os.environ.get("HOROVOD_HOSTNAME", ""),
                "start": t_boot,
                "imported": t_imported,
                "hvd_init": t_init,
                "ready": time.time(),
            }
        ),
        flush=True,
    )
    state = hvd.elastic.KerasState(
        model,
        optimizer=opt,
        epoch=int(resumed["epoch"]),
        samples=int(resumed["samples"]),
        batch=0,
        history=list(resumed.get("history", []))[-HISTORY_LIMIT:],
        checkpoint=str(resumed.get("checkpoint", "")),
        # Part of the synced state: commits are collective (they broadcast the host-update
        # check), so every rank must commit after the same batches, joiners included.
        commit_every=cfg.commit_batches or 1,
    )
    n = len(ds.x_train)
    bs = cfg.batch_size
    clock: dict[str, float] = {"interrupted": 0.0, "last_progress": 0.0, "commit_sum": 0.0}

    def on_reset() -> None:
        opt.learning_rate.assign(scaled_lr(cfg.learning_rate, hvd.size()))
        metrics.RESETS.inc()
        metrics.WORLD_SIZE.set(hvd.size())

    state.register_reset_callbacks([on_reset])

    class Progress(tf.keras.callbacks.Callback):  # type: ignore[misc]
        """Count, then commit (in that order), time steps, report progress."""

        def __init__(self, size: int) -> None:
            super().__init__()
            self.size = size
            self.t0 = 0.0
            self.first = True
            self.step_times: list[float] = []

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            now = time.perf_counter()
            metrics.STEP_SECONDS.observe(now - self.t0)
            self.step_times.append(now - self.t0)
            metrics.STEPS.inc()
            metrics.SAMPLES.inc(bs)
            if self.first:
                self.first = False
                since = time.time() - clock["interrupted"] if clock["interrupted"] else None
                if since is not None:
                    metrics.RESET_SECONDS.set(since)
                    clock["interrupted"] = 0.0
                if rank0():
                    emit(
                        "EVENT",
                        {
                            "event": "first_step",
                            "world_size": self.size,
                            "time": time.time(),
                            "since_interrupt_s": since,
                            **_pos(state),
                        },
                    )
            state.samples += self.size * bs
            state.batch += 1
            if state.batch % state.commit_every == 0:
                commit()
            if rank0() and time.time() - clock["last_progress"] >= PROGRESS_MIN_INTERVAL_S:
                report(logs or {})

    def commit() -> None:
        try:
            state.commit()
        except HostsUpdatedInterrupt:
            # commit() saved the state before checking hosts: these weights are the committed ones.
            clock["interrupted"] = time.time()
            clock["commit_sum"] = weights_checksum(model.get_weights())
            if rank0():
                emit(
                    "EVENT",
                    {
                        "event": "interrupt",
                        "time": clock["interrupted"],
                        "world_size": hvd.size(),
                        "weights_checksum": clock["commit_sum"],
                        **_pos(state),
                    },
                )
            # Always re-sync: Horovod skips the broadcast when it saw only removals, but a host
            # added while workers were still starting (its notification lost) joins in the
            # same reset and waits in the broadcast forever (observed).
            raise HostsUpdatedInterrupt(False) from None

    def report(epoch_metrics: dict[str, Any]) -> None:
        clock["last_progress"] = time.time()
        emit(
            "PROGRESS",
            {
                "epoch": int(state.epoch),
                "batch": int(state.batch),
                "worldSize": hvd.size(),
                "metrics": {k: float(v) for k, v in epoch_metrics.items()},
                "history": state.history[-HISTORY_LIMIT:],
                "checkpoint": state.checkpoint,
                # this process is rank 0; in a pod the hostname is the pod's name
                "rank0Pod": socket.gethostname(),
            },
        )

    @hvd.elastic.run  # type: ignore[untyped-decorator]
    def loop(state: Any) -> None:
        size, rank = hvd.size(), hvd.rank()
        metrics.WORLD_SIZE.set(size)
        if rank0():
            emit(
                "EVENT",
                {
                    "event": "start",
                    "world_size": size,
                    "time": time.time(),
                    "weights_checksum": weights_checksum(model.get_weights()),
                    "last_commit_checksum": clock["commit_sum"],
                    "learning_rate": float(opt.learning_rate.numpy()),
                    **_pos(state),
                },
            )
        while state.epoch < cfg.epochs:
            t_epoch = time.time()
            order = epoch_order(n, state.epoch, cfg.seed)
            idx = shard_indices(order, state.samples, rank, size, bs)
            fit_logs: dict[str, float] = {}
            train_s, step_s = 0.0, 0.0
            if len(idx):
                data = (
                    tf.data.Dataset.from_tensor_slices((ds.x_train[idx], ds.y_train[idx]))
                    .batch(bs)
                    .prefetch(tf.data.AUTOTUNE)
                )
                cb = Progress(size)
                t_fit = time.time()
                h = model.fit(data, epochs=1, verbose=0, callbacks=[cb])
                train_s = time.time() - t_fit
                fit_logs = {k: float(v[-1]) for k, v in h.history.items()}
                fit_logs["_step_s"] = float(np.median(cb.step_times)) if cb.step_times else 0.0
            # Average the per-rank training metrics; every rank takes part in the allreduce.
            names = sorted(fit_logs)
            if names:
                avg = hvd.allreduce(tf.constant([fit_logs[k] for k in names]), name="epoch_logs")
                fit_logs = dict(zip(names, (float(v) for v in avg.numpy()), strict=True))
                step_s = fit_logs.pop("_step_s")
                if not cfg.commit_batches:  # auto: the same value on every rank (allreduced)
                    state.commit_every = decide_commit_every(step_s)
            val = model.evaluate(ds.x_val, ds.y_val, batch_size=256, verbose=0, return_dict=True)
            epoch_logs = {**fit_logs, **{f"val_{k}": float(v) for k, v in val.items()}}
            elapsed = time.time() - t_epoch
            state.history = [
                *state.history,
                {
                    "epoch": int(state.epoch) + 1,
                    "worldSize": size,
                    "seconds": round(elapsed, 3),
                    # Training only (no validation), and the median step: for throughput.
                    "trainSeconds": round(train_s, 4),
                    "stepSeconds": round(step_s, 5),
                    "samples": len(idx) * size,
                    **epoch_logs,
                },
            ][-HISTORY_LIMIT:]
            state.epoch += 1
            state.samples = 0
            state.batch = 0
            _epoch_metrics(epoch_logs, len(idx) * size / max(elapsed, 1e-9), int(state.epoch))
            if rank0():
                log(
                    f"epoch {state.epoch}/{cfg.epochs} world_size={size} "
                    + " ".join(f"{k}={v:.4f}" for k, v in sorted(epoch_logs.items()))
                )
                ck = cfg.checkpoint_epochs
                if ck and (state.epoch % ck == 0 or state.epoch == cfg.epochs):
                    state.checkpoint = write_checkpoint(store, state, model, opt)
                report(epoch_logs)
            commit()

    loop(state)

    if rank0():
        save_results(cfg, store, model, state.history)
        emit("EVENT", {"event": "done", **_pos(state), "resultsURI": store.uri})
        emit(
            "PROGRESS",
            {
                "epoch": int(state.epoch),
                "batch": 0,
                "worldSize": hvd.size(),
                "metrics": {
                    k: v
                    for k, v in (state.history or [{}])[-1].items()
                    if isinstance(v, float) and k not in TIMING_KEYS
                },
                "history": state.history,
                "checkpoint": state.checkpoint,
                "resultsURI": store.uri,
            },
        )


def _pretrace(model: Any, ds: Dataset, batch_size: int) -> None:
    """Trace the train step before the first collective (the state sync).

    Tracing takes 1-2 s. Done here, a model that cannot train fails in its own process before
    the ring forms instead of leaving the other ranks waiting in an allreduce, and the first
    step after a (re)start is short (0.3 s instead of 2.4 s measured). It does not shorten a
    grow as a whole: the running workers wait for the joiner either way. Tracing runs no ops,
    so no collective is entered here."""
    import tensorflow as tf

    warm = tf.data.Dataset.from_tensor_slices(
        (ds.x_train[:batch_size], ds.y_train[:batch_size])
    ).batch(batch_size)
    fn = model.make_train_function()
    if hasattr(fn, "get_concrete_function"):
        fn.get_concrete_function(iter(warm))


def _pos(state: Any) -> dict[str, int]:
    if isinstance(state, dict):
        return {"epoch": int(state.get("epoch", 0)), "samples": int(state.get("samples", 0))}
    return {"epoch": int(state.epoch), "samples": int(state.samples), "batch": int(state.batch)}


def _epoch_metrics(logs: dict[str, float], samples_per_s: float, epoch: int) -> None:
    metrics.EPOCH.set(epoch)
    metrics.SAMPLES_PER_SECOND.set(samples_per_s)
    for key, gauge in (
        ("loss", metrics.LOSS),
        ("accuracy", metrics.ACCURACY),
        ("val_loss", metrics.VAL_LOSS),
        ("val_accuracy", metrics.VAL_ACCURACY),
    ):
        if key in logs:
            gauge.set(logs[key])


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


def main(t_boot: float | None = None) -> int:
    cfg = from_env()
    train(cfg, t_boot)
    return 0
