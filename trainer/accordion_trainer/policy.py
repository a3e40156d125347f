"""The training loop's pure rules: learning-rate scaling, commit cadence, divergence."""

from __future__ import annotations

import math

from .errors import Reason, TrainerError


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


def divergence(logs: dict[str, float], epoch: int, learning_rate: float) -> TrainerError | None:
    """`TrainingDiverged` when an epoch ends with a NaN or infinite metric, else None (pure).

    Every later step would compute on NaN weights: going on only burns the GPUs, a checkpoint
    would keep the broken weights, and progress could not be reported (JSON has no NaN). The
    training metrics are allreduced and validation runs on the same weights everywhere, so every
    rank stops here together instead of leaving the others waiting in a collective."""
    bad = sorted(k for k, v in logs.items() if not math.isfinite(v))
    if not bad:
        return None
    return TrainerError(
        Reason.TrainingDiverged,
        f"epoch {epoch}: {', '.join(f'{k}={logs[k]}' for k in bad)}; lower learning_rate "
        f"({learning_rate:g}, multiplied by the number of workers) or check the data for NaN "
        "or infinite values",
    )
