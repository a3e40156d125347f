"""`python -m accordion_trainer` (`accordion-train`): the trainer's command line.

Commands:
  run       standalone elastic training on this machine (no Kubernetes, no MinIO)
  dataset   write the offline MNIST sample (5,000 real images) in the supported formats
  train     one training process (started by horovodrun; not for direct use)
  exec      one training process that runs the user's command (started by horovodrun)
  warm      a worker pod's training process, prepared before horovodrun starts it (warm.py)
  stage     stage a data bucket/prefix into a local directory
  worker    in-cluster worker pod: stage data in, serve SSH for the launcher
  launcher  in-cluster launcher pod: horovodrun elastic over the run's Ready worker pods
  discover  print the run's Ready worker pods as `<podIP>:<slots>` (horovodrun's discovery)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .errors import Reason, TrainerError, fail

#: When this process started running Python code (startup-time accounting on rescale).
T_BOOT = time.time()


def _parse_hparams(pairs: list[str], raw: str | None) -> dict[str, object]:
    hp: dict[str, object] = json.loads(raw) if raw else {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise TrainerError(Reason.TrainingError, f"--hparam {pair!r}: expected KEY=VALUE")
        try:
            hp[key] = json.loads(value)
        except ValueError:
            hp[key] = value
    return hp


def _model_env(model: str, command: str | None) -> str:
    if command:  # as a TrainingRun's spec.model: the command runs in the code's folder
        if not Path(model).exists():
            raise TrainerError(Reason.ModelInvalid, f"--command needs --model PATH: {model!r}")
        return json.dumps({"path": str(Path(model).resolve()), "command": command})
    if Path(model).exists():
        return json.dumps({"path": str(Path(model).resolve())})
    return json.dumps({"builtin": model})


def cmd_run(a: argparse.Namespace) -> int:
    from . import standalone
    from .data import open_dir
    from .errors import parse_error_line
    from .models import BUILTIN_MODELS

    # Fail fast, in this process and with the contract's reason, before starting N workers.
    if not Path(a.model).exists() and a.model not in BUILTIN_MODELS:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise TrainerError(Reason.ModelInvalid, f"unknown model {a.model!r} (built-in: {known})")
    if a.data is None and not a.command:
        raise TrainerError(Reason.TrainingError, "--data is required (unless --command is given)")
    if not Path(a.model).exists():
        open_dir(Path(a.data))  # sharded data: its headers only
    work = Path(a.work).resolve() if a.work else Path(tempfile.mkdtemp(prefix="accordion-run-"))
    s3_env: dict[str, str] = {}
    if a.results.startswith("s3://"):
        # Results and checkpoints in MinIO/S3, as in a cluster; credentials from AWS_* env.
        bucket, _, prefix = a.results.removeprefix("s3://").partition("/")
        endpoint = a.s3_endpoint or os.environ.get("ACCORDION_RESULTS_ENDPOINT", "")
        if not endpoint:
            raise TrainerError(Reason.TrainingError, "--results s3://... needs --s3-endpoint")
        s3_env = {
            "ACCORDION_RESULTS_ENDPOINT": endpoint,
            "ACCORDION_RESULTS_BUCKET": bucket,
            "ACCORDION_RESULTS_SECURE": "true" if a.s3_secure else "false",
        }
        a.prefix = "/".join(p for p in (prefix.strip("/"), a.prefix) if p)
        results = work / "local-results"  # only the launcher-side log lands here
    else:
        results = Path(a.results).resolve()
    env = dict(os.environ)
    # a standalone run's results go to RESULTS/PREFIX/RUN (run_dir below), whatever the shell has
    env.pop("ACCORDION_RESULTS_PATH", None)
    env.update(
        {
            "ACCORDION_RUN_NAME": a.run_name,
            "ACCORDION_MODEL": _model_env(a.model, a.command),
            "ACCORDION_HPARAMS": json.dumps(_parse_hparams(a.hparam, a.hparams)),
            "ACCORDION_EPOCHS": str(a.epochs),
            "ACCORDION_BATCH_SIZE": str(a.batch_size),
            "ACCORDION_CHECKPOINT_EPOCHS": str(a.checkpoint_epochs),
            "ACCORDION_DATA_DIR": str(Path(a.data or work / "data").resolve()),
            "ACCORDION_RESULTS_PREFIX": a.prefix,
            "ACCORDION_WORK_DIR": str(work / "scratch"),
            "ACCORDION_COMMIT_BATCHES": str(a.commit_batches),
            # Two cores shared by N processes: more TF threads than cores only adds contention.
            "ACCORDION_TF_THREADS": env.get(
                "ACCORDION_TF_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, a.np)))
            ),
            "TF_CPP_MIN_LOG_LEVEL": env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
    )
    env.update(s3_env or {"ACCORDION_RESULTS_DIR": str(results)})
    if a.metrics_port:
        env["ACCORDION_METRICS_PORT"] = str(a.metrics_port)
    run_dir = results / a.prefix / a.run_name if a.prefix else results / a.run_name
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    print(f"[run] work dir {work}; hosts file {work / 'hosts'}", flush=True)
    log_file = run_dir / "logs" / "train.log"
    rc = standalone.run(a.np, work, env, min_np=a.min_np, max_np=a.max_np, log_file=log_file)
    if rc == 0:
        return 0
    with log_file.open() as f:
        for line in f:
            err = parse_error_line(line)
            if err is not None:
                raise err
    raise TrainerError(Reason.TrainingError, f"horovodrun exited with {rc}; see {log_file}")


def cmd_dataset(a: argparse.Namespace) -> int:
    from .data import write_sample

    for path in write_sample(Path(a.out), a.format):
        print(path)
    return 0


def cmd_train(_: argparse.Namespace) -> int:
    from .gpus import pin_process

    pin_process()  # before train.py imports TensorFlow, which reads the devices once
    from .train import main

    return main(T_BOOT)


def cmd_warm(a: argparse.Namespace) -> int:
    from .warm import WARM_DIR_ENV, serve

    return serve(a.slot, Path(os.environ[WARM_DIR_ENV]), T_BOOT)


def cmd_exec(_: argparse.Namespace) -> int:
    from .gpus import pin_process
    from .usercmd import main

    pin_process()  # the command inherits this environment before it imports TensorFlow
    return main()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="accordion-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="standalone elastic training on this machine")
    r.add_argument("-np", "--np", type=int, default=2, help="workers to start with")
    r.add_argument("--min-np", type=int, default=1)
    r.add_argument("--max-np", type=int, default=None)
    r.add_argument("--model", default="mnist-cnn", help="built-in name, .py, folder or zip/tar")
    r.add_argument(
        "--command",
        default=None,
        help="run this command (spec.model.command) in the --model folder/archive on every slot",
    )
    r.add_argument("--data", default=None, help="directory with .npz or train.pkl")
    r.add_argument("--results", required=True, help="a directory, or s3://BUCKET[/PREFIX]")
    r.add_argument("--prefix", default="", help="results go to RESULTS/PREFIX/RUN/")
    r.add_argument("--s3-endpoint", default=None, help="MinIO/S3 host:port for s3:// results")
    r.add_argument("--s3-secure", action="store_true", help="use https for --s3-endpoint")
    r.add_argument("--run-name", default="run")
    r.add_argument("--epochs", type=int, default=5)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--checkpoint-epochs", type=int, default=1)
    r.add_argument(
        "--commit-batches",
        type=int,
        default=0,
        help="commit the elastic state every N batches (0: about every 0.2 s)",
    )
    r.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--hparams", default=None, help="JSON object of hyperparameters")
    r.add_argument("--work", default=None, help="work dir (hosts file, scripts); default: temp")
    r.add_argument("--metrics-port", type=int, default=0, help="serve /metrics per worker")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("dataset", help="write the offline MNIST sample")
    d.add_argument("--out", required=True)
    d.add_argument("--format", choices=["npz", "pickle", "both"], default="both")
    d.set_defaults(func=cmd_dataset)

    t = sub.add_parser("train", help="one training process (horovodrun starts it)")
    t.set_defaults(func=cmd_train)

    w = sub.add_parser("warm", help="a worker pod's training process, prepared in advance")
    w.add_argument("--slot", type=int, required=True, help="the local rank it will serve")
    w.set_defaults(func=cmd_warm)

    x = sub.add_parser("exec", help="one training process running spec.model.command")
    x.set_defaults(func=cmd_exec)

    from . import incluster

    incluster.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    if (sys.argv[1:] if argv is None else argv) == ["train"]:
        # horovodrun's start on a worker pod: hand it to the pod's warm process (warm.py), if it
        # has one, before importing anything more (the running workers wait for this)
        from .warm import hand_off

        handed = hand_off(os.environ)
        if handed is not None:
            sys.exit(handed)
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except TrainerError as e:
        code = fail(e)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
