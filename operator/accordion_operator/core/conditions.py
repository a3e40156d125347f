"""A status' conditions being rebuilt (pure; both kinds)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from accordion_operator.api.common import Condition
from accordion_operator.core.timefmt import to_rfc3339


class Conditions:
    """A status' conditions being rebuilt: keeps a condition's lastTransitionTime while its
    status holds, and dumps them in a fixed order (TrainingRun's and Experiment's)."""

    def __init__(
        self, old: Iterable[Condition], generation: int | None, now: float, order: Sequence[str]
    ) -> None:
        self.old = {c.type: c for c in old}
        self.new: dict[str, Condition] = {}
        self.now = now
        self.generation = generation
        self.order = order

    def set(self, ctype: str, status: bool, reason: str, message: str = "") -> None:
        value: Literal["True", "False"] = "True" if status else "False"
        old = self.old.get(ctype)
        since = (
            old.last_transition_time
            if old is not None and old.status == value
            else to_rfc3339(self.now)
        )
        self.new[ctype] = Condition(
            type=ctype,
            status=value,
            reason=reason,
            message=message[:1024],
            last_transition_time=since,
            observed_generation=self.generation,
        )

    def changed(self, ctype: str) -> bool:
        old, new = self.old.get(ctype), self.new.get(ctype)
        return new is not None and (
            old is None or (old.status, old.reason) != (new.status, new.reason)
        )

    def ordered(self) -> list[Condition]:
        return [self.new[t] for t in self.order if t in self.new]

    def dump(self) -> list[dict[str, Any]]:
        return [c.model_dump(by_alias=True, exclude_none=True) for c in self.ordered()]
