"""The training process: one per Horovod slot, started by `horovodrun` (standalone or launcher).

Elastic loop (hvd.elastic.run + KerasState) with these deliberate choices:
- the optimizer is built before the state exists, or a worker joining late deadlocks in the
  optimizer-variable broadcast;
- one callback updates batch/sample counters and then commits, so the committed batch never lags;
- resume is batch-exact: the state carries `samples` (position in the epoch's global order) and
  each (re)start feeds only the samples not yet consumed, re-sharded for the current world size;
- streamed data (`shards`): the state also carries the plan over the epoch's stream of shard
  rows (`pending`, `plan_world`, `plan_steps`), so each sample is trained exactly once per epoch
  across resets while each rank reads only its own shards;
- the learning rate is `lr * world size` (Horovod's recommendation) and is re-set on every reset.

Rank 0 prints machine-readable lines for the launcher (`ACCORDION_PROGRESS {json}`) and for tests
and benchmarks (`ACCORDION_EVENT {json}`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint, metrics
from .compiling import build_optimizer, describe_shape_error, plan_compile
from .config import TrainConfig, from_env
from .data import Dataset, class_labels, epoch_order, open_dir, shard_indices, take, to_dataset
from .errors import Reason, TrainerError
from .hostupdates import keep_updates_until_listened
from .models import build, resolve
from .outputs import emit, keep_log, open_results, save_results, write_checkpoint
from .policy import decide_commit_every, divergence, scaled_lr
from .shards import Plan, RankReader, ShardedData
from .store import Store

HISTORY_LIMIT = 50
#: History fields that are timings, not model metrics (kept out of `status.training.metrics`).
TIMING_KEYS = frozenset({"seconds", "trainSeconds", "stepSeconds"})
PROGRESS_MIN_INTERVAL_S = 2.0


def weights_checksum(weights: list[Any]) -> float:
    return float(sum(float(np.abs(w).sum()) for w in weights))


#: `ACCORDION_SAMPLE_TRACE=<dir>`: every training process appends the ids of the samples of each
#: batch it trained (`shards.ID_SHIFT`) to a file there (streamed data only; for tests).
SAMPLE_TRACE_ENV = "ACCORDION_SAMPLE_TRACE"

AnyData = Dataset | ShardedData


def load_data(cfg: TrainConfig, code: Any) -> AnyData:
    if code.load_data is None:
        return open_dir(cfg.data_dir)
    try:
        out = code.load_data(str(cfg.data_dir), cfg.hparams)
    except TrainerError:
        raise
    except Exception as e:
        raise TrainerError(Reason.DataUnreadable, f"load_data failed: {e!r}") from e
    if isinstance(out, Dataset | ShardedData):  # ShardedData: shards.open_shards(folder)
        return out
    if isinstance(out, dict) and "x_train" in out and "y_train" in out:
        return to_dataset(out, where="load_data()")
    if isinstance(out, tuple | list) and len(out) == 2 and all(_is_pair(p) for p in out):
        (xt, yt), (xv, yv) = out  # ((x_train, y_train), (x_val, y_val))
        return to_dataset({"x_train": xt, "y_train": yt, "x_val": xv, "y_val": yv}, "load_data()")
    # The user's code is wrong, not the data: the same reason as a build_model that fails.
    got = type(out).__name__
    if isinstance(out, dict):
        got = f"a dict with keys {sorted(map(str, out))}"
    raise TrainerError(
        Reason.ModelInvalid,
        f"load_data() returned {got}; return a dict with x_train and y_train (optionally "
        "x_val/y_val, x_test/y_test), ((x_train, y_train), (x_val, y_val)) or "
        "accordion_trainer.shards.open_shards(folder)",
    )


def _is_pair(obj: Any) -> bool:
    return isinstance(obj, tuple | list) and len(obj) == 2


def set_tf_threads() -> None:
    import tensorflow as tf

    threads = int(os.environ.get("ACCORDION_TF_THREADS", "0") or 0)
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads))


def train(cfg: TrainConfig, t_boot: float | None = None) -> None:
    hvd, t_imported, t_init = start_horovod()
    ds, model, opt, base_lr = prepared_model(cfg, hvd)
    # A compiled model brings its own learning rate: the job rescales that one on every reset.
    run_job(replace(cfg, learning_rate=base_lr), hvd, ds, model, opt, (t_boot, t_imported, t_init))


def start_horovod(configure_threads: bool = True) -> tuple[Any, float, float]:
    """`horovod.tensorflow.keras`, initialised (and this process's /metrics served outside a
    worker pod), with the times its import and init finished."""
    import horovod.tensorflow.keras as hvd

    t_imported = time.time()
    if configure_threads:
        set_tf_threads()
    hvd.init()
    t_init = time.time()
    port = int(os.environ.get("ACCORDION_METRICS_PORT", "0") or 0)
    if port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.serve(port, addr=os.environ.get("HOROVOD_HOSTNAME", "127.0.0.1"))
    return hvd, t_imported, t_init


def run_job(
    cfg: TrainConfig,
    hvd: Any,
    ds: AnyData,
    model: Any,
    opt: Any,
    boot: tuple[float | None, float, float],
    handoff: float | None = None,
) -> list[dict[str, Any]]:
    """Resume, the elastic loop to the last epoch, and rank 0's results; the history.
    `boot`: when the process started, imported Horovod, and initialised it; `handoff`: when
    horovodrun's start was handed to this (warm) process."""
    job = _Job(cfg, hvd, ds, model, opt, open_results(cfg))
    resumed = job.resume()
    _print_boot(hvd.rank(), *boot, handoff=handoff)
    job.run(resumed)
    if job.rank0():
        job.finish()
    return list(job.state.history)


def prepared_model(
    cfg: TrainConfig, hvd: Any, size: int | None = None
) -> tuple[AnyData, Any, Any, float]:
    """The user code's data and model, compiled (`compile_model`)."""
    code = resolve(cfg.model, cfg.work_dir)
    return compile_model(cfg, hvd, load_data(cfg, code), build(code, cfg.hparams), size)


def compile_model(
    cfg: TrainConfig, hvd: Any, ds: AnyData, model: Any, size: int | None = None
) -> tuple[AnyData, Any, Any, float]:
    """The data, the model compiled with Horovod's optimizer (built here, before the state
    exists: a worker joining late would otherwise deadlock in the optimizer-variable broadcast)
    and the learning rate at world size 1. The user's compile is kept (`compiling`). `size`:
    the world size the learning rate is scaled for, when Horovod is not initialised yet (a warm
    process, warm.py: it re-scales once it is)."""
    plan = plan_compile(model, str(cfg.hparams.get("optimizer", "adam")), cfg.learning_rate)
    if not plan.user_compiled:
        ds = ds.with_class_labels() if isinstance(ds, ShardedData) else class_labels(ds)
    world = hvd.size() if size is None else size
    opt = hvd.DistributedOptimizer(build_optimizer(plan, scaled_lr(plan.base_lr, world)))
    model.compile(optimizer=opt, **plan.compile_args)
    opt.build(model.trainable_variables)
    if os.environ.get("ACCORDION_PRETRACE", "1") != "0":
        _pretrace(model, ds, cfg.batch_size)
    return ds, model, opt, plan.base_lr


def _print_boot(
    rank: int, t_boot: float | None, t_imported: float, t_init: float, handoff: float | None
) -> None:
    """Every rank (not only 0): where a (re)joining worker's startup time goes."""
    print(
        "ACCORDION_BOOT "
        + json.dumps(
            {
                "rank": rank,
                "host": os.environ.get("HOROVOD_HOSTNAME", ""),
                "start": t_boot,
                "imported": t_imported,
                "hvd_init": t_init,
                "handoff": handoff,
                "ready": time.time(),
            }
        ),
        flush=True,
    )


class _Job:
    """One training process: the model, optimizer, results store, elastic state and clocks that
    the steps of `train` share."""

    def __init__(
        self, cfg: TrainConfig, hvd: Any, ds: AnyData, model: Any, opt: Any, store: Store
    ) -> None:
        self.cfg = cfg
        self.hvd = hvd
        self.ds = ds
        self.model = model
        self.opt = opt
        self.store = store
        self.clock: dict[str, float] = {
            "interrupted": 0.0,
            "last_progress": 0.0,
            "commit_sum": 0.0,
            # when the world (`self.world`) was last confirmed: its (re)start or last commit
            "world": 0.0,
        }
        #: every rank's pod, in rank order (docs/contract.md: `status.training.worldPods`)
        self.world: list[str] = []
        #: hvd.elastic.KerasState, created by `run` once the checkpoint (if any) is loaded.
        self.state: Any = None
        self.progress = _progress_callback(self)
        #: streamed data: the plan the current `fit` trains and the reader that feeds it
        self.plan: Plan | None = None
        self.reader: RankReader | None = None
        self.trace_dir = os.environ.get(SAMPLE_TRACE_ENV, "")

    def rank0(self) -> bool:
        # Evaluated each time: ranks are re-assigned on every elastic reset (and horovodrun's
        # `[N]` output prefix keeps the rank a process was started with, so it is no guide).
        return bool(self.hvd.rank() == 0)

    def log(self, msg: str) -> None:
        if self.rank0():
            print(f"[trainer] {msg}", flush=True)
            keep_log(msg)

    def resume(self) -> dict[str, Any]:
        """Rank 0 loads the newest checkpoint; the state sync hands it to the other ranks."""
        resumed: dict[str, Any] = {"epoch": 0, "samples": 0, "history": []}
        if self.rank0():
            loaded = checkpoint.load_newest(self.store, log=self.log)
            if loaded is not None:
                mw, ow = checkpoint.deserialize_weights(loaded.weights)
                self.model.set_weights(mw)
                for var, value in zip(self.opt.variables, ow, strict=True):
                    var.assign(value)
                resumed = loaded.state
                self.log(f"resumed from checkpoint {loaded.manifest.id}")
                emit(
                    "EVENT", {"event": "resume", "checkpoint": loaded.manifest.id, **_pos(resumed)}
                )
        return resumed

    def run(self, resumed: dict[str, Any]) -> None:
        """The elastic loop, from the resumed position to the last epoch."""
        self.state = self.hvd.elastic.KerasState(
            self.model,
            optimizer=self.opt,
            epoch=int(resumed["epoch"]),
            samples=int(resumed["samples"]),
            batch=0,
            history=list(resumed.get("history", []))[-HISTORY_LIMIT:],
            checkpoint=str(resumed.get("checkpoint", "")),
            # Part of the synced state: commits are collective (they broadcast the host-update
            # check), so every rank must commit after the same batches, joiners included.
            commit_every=self.cfg.commit_batches or 1,
            # Streamed data (shards.Plan): the epoch's stream intervals not trained when the
            # current plan was made, the world it was made for, and its steps trained since.
            pending=(),
            plan_world=0,
            plan_steps=0,
        )
        self.state.register_reset_callbacks([self.on_reset])
        from horovod.common.elastic import notification_manager

        keep_updates_until_listened(notification_manager)
        self.hvd.elastic.run(self.loop)(self.state)

    def on_reset(self) -> None:
        self.opt.learning_rate.assign(scaled_lr(self.cfg.learning_rate, self.hvd.size()))
        metrics.RESETS.inc()
        metrics.WORLD_SIZE.set(self.hvd.size())

    def first_step(self, size: int) -> None:
        """The first step at this world size: how long the reset took, if there was one."""
        clock = self.clock
        since = time.time() - clock["interrupted"] if clock["interrupted"] else None
        if since is not None:
            metrics.RESET_SECONDS.set(since)
            clock["interrupted"] = 0.0
        if self.rank0():
            emit(
                "EVENT",
                {
                    "event": "first_step",
                    "world_size": size,
                    "time": time.time(),
                    "since_interrupt_s": since,
                    **_pos(self.state),
                },
            )

    def count_batch(self, size: int, logs: Any) -> None:
        """Count the batch, then commit (in that order: the committed batch never lags)."""
        if self.plan is not None:
            self.trace_batch()
            self.state.samples += self.plan.step_samples(self.state.plan_steps)
            self.state.plan_steps += 1
        else:
            self.state.samples += size * self.cfg.batch_size
        self.state.batch += 1
        if self.state.batch % self.state.commit_every == 0:
            self.commit()
        if self.rank0() and time.time() - self.clock["last_progress"] >= PROGRESS_MIN_INTERVAL_S:
            self.report(logs or {})

    def commit(self) -> None:
        from horovod.common.exceptions import HostsUpdatedInterrupt

        try:
            self.state.commit()
            # Horovod interrupts a commit to admit the hosts it discovered: a commit that
            # returns confirms that no Ready worker is waiting to join this world.
            self.clock["world"] = time.time()
        except HostsUpdatedInterrupt:
            # commit() saved the state before checking hosts: these weights are the committed ones.
            self.clock["interrupted"] = time.time()
            self.clock["commit_sum"] = weights_checksum(self.model.get_weights())
            if self.rank0():
                emit(
                    "EVENT",
                    {
                        "event": "interrupt",
                        "time": self.clock["interrupted"],
                        "world_size": self.hvd.size(),
                        "weights_checksum": self.clock["commit_sum"],
                        **_pos(self.state),
                    },
                )
            # Always re-sync: Horovod skips the broadcast when it saw only removals, but a host
            # added while workers were still starting (its notification lost) joins in the
            # same reset and waits in the broadcast forever (observed).
            raise HostsUpdatedInterrupt(False) from None

    def report(self, epoch_metrics: dict[str, Any]) -> None:
        self.clock["last_progress"] = time.time()
        emit(
            "PROGRESS",
            {
                "epoch": int(self.state.epoch),
                "batch": int(self.state.batch),
                "worldSize": self.hvd.size(),
                "metrics": {k: float(v) for k, v in epoch_metrics.items()},
                "history": self.state.history[-HISTORY_LIMIT:],
                "checkpoint": self.state.checkpoint,
                # this process is rank 0
                "rank0Pod": pod_name(),
                "worldPods": self.world,
                "worldTime": self.clock["world"],
            },
        )

    def loop(self, state: Any) -> None:
        """What `hvd.elastic.run` (re)starts after every reset, with the synced `state`."""
        size, rank = self.hvd.size(), self.hvd.rank()
        metrics.WORLD_SIZE.set(size)
        self.gather_world()
        if self.rank0():
            emit(
                "EVENT",
                {
                    "event": "start",
                    "world_size": size,
                    "time": time.time(),
                    "weights_checksum": weights_checksum(self.model.get_weights()),
                    "last_commit_checksum": self.clock["commit_sum"],
                    "learning_rate": float(self.opt.learning_rate.numpy()),
                    **_pos(state),
                },
            )
        while state.epoch < self.cfg.epochs:
            self.epoch(state, size, rank)

    def gather_world(self) -> None:
        """Every rank's pod, in rank order, after this (re)start's state sync. A collective: all
        ranks run `loop` from the same point, joiners included. A training process that died
        is missing from it while its pod stays Ready (Horovod drops the host for good); the
        operator replaces such a pod."""
        from horovod.tensorflow import allgather_object

        ranks = allgather_object(pod_name(), name="accordion_world")
        # a pod with N GPUs holds N consecutive ranks: list it once (the CRD bounds the list
        # by the number of workers)
        self.world = list(dict.fromkeys(str(p) for p in ranks))
        self.clock["world"] = time.time()

    def epoch(self, state: Any, size: int, rank: int) -> None:
        """The rest of the current epoch: the samples not yet consumed, re-sharded for `size`."""
        cfg = self.cfg
        t_epoch = time.time()
        data, trained = self.train_data(state, size, rank)
        fit_logs: dict[str, float] = {}
        train_s, step_s = 0.0, 0.0
        if data is not None:
            fit_logs, train_s = self.fit(data, size)
        if fit_logs:
            fit_logs = self.average(fit_logs)
            step_s = fit_logs.pop("_step_s")
            if not cfg.commit_batches:  # auto: the same value on every rank (allreduced)
                state.commit_every = decide_commit_every(step_s)
        val = self.model.evaluate(
            self.ds.x_val, self.ds.y_val, batch_size=256, verbose=0, return_dict=True
        )
        epoch_logs = {**fit_logs, **{f"val_{k}": float(v) for k, v in val.items()}}
        # before the epoch is recorded or checkpointed: the last checkpoint stays a sound one
        diverged = divergence(epoch_logs, int(state.epoch) + 1, cfg.learning_rate)
        if diverged is not None:
            raise diverged
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
                "samples": trained,
                **epoch_logs,
            },
        ][-HISTORY_LIMIT:]
        state.epoch += 1
        state.samples = 0
        state.batch = 0
        state.pending, state.plan_world, state.plan_steps = (), 0, 0
        metrics.record_epoch(epoch_logs, trained / max(elapsed, 1e-9), int(state.epoch))
        if self.rank0():
            self.log(
                f"epoch {state.epoch}/{cfg.epochs} world_size={size} "
                + " ".join(f"{k}={v:.4f}" for k, v in sorted(epoch_logs.items()))
            )
            ck = cfg.checkpoint_epochs
            if ck and (state.epoch % ck == 0 or state.epoch == cfg.epochs):
                state.checkpoint = write_checkpoint(self.store, state, self.model, self.opt)
            self.report(epoch_logs)
        self.commit()

    def train_data(self, state: Any, size: int, rank: int) -> tuple[Any, int]:
        """This rank's batches for the rest of the epoch (a tf.data.Dataset, None when nothing
        is left) and how many samples all ranks train with them."""
        import tensorflow as tf

        bs = self.cfg.batch_size
        if isinstance(self.ds, ShardedData):
            return self.stream(state, size, rank)
        self.plan = self.reader = None
        order = epoch_order(len(self.ds.x_train), state.epoch, self.cfg.seed)
        idx = shard_indices(order, state.samples, rank, size, bs)
        if not len(idx):
            return None, 0
        data = (
            tf.data.Dataset.from_tensor_slices((self.ds.x_train[idx], take(self.ds.y_train, idx)))
            .batch(bs)
            .prefetch(tf.data.AUTOTUNE)
        )
        return data, len(idx) * size

    def stream(self, state: Any, size: int, rank: int) -> tuple[Any, int]:
        """Streamed data: plan the epoch's untrained stream for this world (shards.Plan) and
        read this rank's part shard by shard. The plan is made from the synced state, so every
        rank makes the same one; after a reset, the steps the previous plan trained (counted
        in `plan_steps`, committed with the weights) are taken out of `pending` first."""
        import tensorflow as tf

        assert isinstance(self.ds, ShardedData)
        bs = self.cfg.batch_size
        if state.plan_world:
            old = Plan(tuple(map(tuple, state.pending)), int(state.plan_world), bs)
            pending = old.remaining_after(int(state.plan_steps))
        else:  # the epoch starts: all of its stream
            pending = ((0, self.ds.n_train),)
        # new objects, never changed in place: Horovod's saved state keeps references to them
        state.pending, state.plan_world, state.plan_steps = pending, size, 0
        plan = Plan(pending, size, bs)
        if plan.dropped and self.rank0():
            self.log(f"epoch {int(state.epoch) + 1}: {plan.dropped} last samples < world {size}")
        if not plan.steps:
            self.plan = self.reader = None
            return None, 0
        self.plan = plan
        self.reader = reader = RankReader(
            self.ds, plan, rank, int(state.epoch), self.cfg.seed, trace=bool(self.trace_dir)
        )
        x_shape, y_shape, y_dtype = self.ds.signature()
        data = tf.data.Dataset.from_generator(
            reader.batches,
            output_signature=(
                tf.TensorSpec(x_shape, tf.float32),
                tf.TensorSpec(y_shape, tf.as_dtype(y_dtype)),
            ),
        ).prefetch(2)
        return data, plan.total - plan.dropped

    def trace_batch(self) -> None:
        """`ACCORDION_SAMPLE_TRACE`: the ids of the batch just trained (batch k of a `fit` is
        the reader's k-th; counted before the commit, which keeps it)."""
        if not (self.trace_dir and self.reader is not None and self.reader.ids is not None):
            return
        ids = self.reader.ids[int(self.state.plan_steps)]
        line = {"epoch": int(self.state.epoch), "world": self.hvd.size(), "ids": ids}
        path = Path(self.trace_dir) / f"trace-{socket.gethostname()}-{os.getpid()}.jsonl"
        with path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def fit(self, data: Any, size: int) -> tuple[dict[str, float], float]:
        """Train on this rank's batches `data`: its last metrics (and `_step_s`, the median
        step), and the seconds it took."""
        cb = self.progress(size)
        t_fit = time.time()
        try:
            h = self.model.fit(data, epochs=1, verbose=0, callbacks=[cb])
        except Exception as e:
            # tf.data hands a reader's error on as its own: report the shard's, with its reason
            reader = self.reader
            if reader is not None and reader.error is not None:
                raise reader.error from e
            raise
        train_s = time.time() - t_fit
        fit_logs = {k: float(v[-1]) for k, v in h.history.items()}
        fit_logs["_step_s"] = float(np.median(cb.step_times)) if cb.step_times else 0.0
        return fit_logs, train_s

    def average(self, fit_logs: dict[str, float]) -> dict[str, float]:
        """The per-rank training metrics averaged; every rank takes part in the allreduce."""
        import tensorflow as tf

        names = sorted(fit_logs)
        avg = self.hvd.allreduce(tf.constant([fit_logs[k] for k in names]), name="epoch_logs")
        return dict(zip(names, (float(v) for v in avg.numpy()), strict=True))

    def finish(self) -> None:
        """Rank 0, after the last epoch: the results, then the final event and progress line."""
        state = self.state
        save_results(self.cfg, self.store, self.model, state.history)
        emit("EVENT", {"event": "done", **_pos(state), "resultsURI": self.store.uri})
        emit(
            "PROGRESS",
            {
                "epoch": int(state.epoch),
                "batch": 0,
                "worldSize": self.hvd.size(),
                "metrics": {
                    k: v
                    for k, v in (state.history or [{}])[-1].items()
                    if isinstance(v, float) and k not in TIMING_KEYS
                },
                "history": state.history,
                "checkpoint": state.checkpoint,
                "resultsURI": self.store.uri,
            },
        )


def _progress_callback(job: _Job) -> type[Any]:
    """The Keras callback class that times steps and drives `job`'s counting and commits
    (defined here because TensorFlow is imported only in a training process)."""
    import tensorflow as tf

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
            metrics.SAMPLES.inc(job.cfg.batch_size)
            if self.first:
                self.first = False
                job.first_step(self.size)
            job.count_batch(self.size, logs)

    return Progress


def _pretrace(model: Any, ds: AnyData, batch_size: int) -> None:
    """Trace the train step before the first collective (the state sync).

    Tracing takes 1-2 s. Done here, a model that cannot train fails in its own process before
    the ring forms instead of leaving the other ranks waiting in an allreduce, and the first
    step after a (re)start is short (0.3 s instead of 2.4 s measured). It does not shorten a
    grow as a whole: the running workers wait for the joiner either way. Tracing runs no ops,
    so no collective is entered here."""
    import tensorflow as tf

    y: Any
    if isinstance(ds, ShardedData):  # the training set stays on disk: a validation batch
        x, y = ds.x_val[:batch_size], ds.y_val[:batch_size]
    else:
        x, y = ds.x_train[:batch_size], take(ds.y_train, slice(None, batch_size))
    warm = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    fn = model.make_train_function()
    if hasattr(fn, "get_concrete_function"):
        try:
            fn.get_concrete_function(iter(warm))
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
            # Tracing computes the loss and metrics: a loss that does not fit the labels'
            # shape or type fails here, in every process alike, before the ring forms.
            raise TrainerError(Reason.ModelInvalid, describe_shape_error(model, y, e)) from e


def pod_name() -> str:
    """This training process's worker pod: ACCORDION_POD_NAME, which the worker's sshd hands
    on (docs/contract.md), else the hostname (a pod's, outside the operator's pods)."""
    return os.environ.get("ACCORDION_POD_NAME") or socket.gethostname()


def _pos(state: Any) -> dict[str, int]:
    if isinstance(state, dict):
        return {"epoch": int(state.get("epoch", 0)), "samples": int(state.get("samples", 0))}
    return {"epoch": int(state.epoch), "samples": int(state.samples), "batch": int(state.batch)}


def main(t_boot: float | None = None) -> int:
    cfg = from_env()
    train(cfg, t_boot)
    return 0
