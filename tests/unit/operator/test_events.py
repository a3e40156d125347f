"""An Event's name says what it is (core/events.py): the same news about the same object is one
name, so a post repeated after a crash is refused instead of doubled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from accordion_operator.core.events import event_body, event_name, repeat_patch

REF = {"apiVersion": "v1", "kind": "Pod", "name": "run-a", "namespace": "ns", "uid": "u1"}


def test_the_name_follows_what_the_event_says() -> None:
    name = event_name(REF, "Warning", "Preempted", "m")
    assert name.startswith("run-a.")
    assert name == event_name(REF, "Warning", "Preempted", "m")
    others = {
        event_name(REF, "Normal", "Preempted", "m"),
        event_name(REF, "Warning", "NodesLost", "m"),
        event_name(REF, "Warning", "Preempted", "m2"),
        event_name({**REF, "uid": "u2"}, "Warning", "Preempted", "m"),  # a new run, same name
    }
    assert name not in others
    assert len(others) == 4


@given(st.text(min_size=1, max_size=300, alphabet="abcdefghij-.0123456789"))
def test_the_name_is_a_valid_length_for_any_object_name(obj: str) -> None:
    assert len(event_name({**REF, "name": obj}, "Warning", "r", "m")) <= 253


def test_the_body_carries_the_name_of_its_cut_reason_and_message() -> None:
    body = event_body(REF, "Warning", "R" * 200, "M" * 2000, 0.0)
    assert body["metadata"]["name"] == event_name(REF, "Warning", "R" * 128, "M" * 1024)
    assert "generateName" not in body["metadata"]


def test_a_repeat_raises_the_count_and_the_last_time() -> None:
    assert repeat_patch({"count": 3}, 60.0) == {
        "count": 4,
        "lastTimestamp": "1970-01-01T00:01:00Z",
    }
    # an Event someone else wrote without a usable count is taken as seen once
    assert repeat_patch({"count": "x"}, 0.0)["count"] == 2
    assert repeat_patch({}, 0.0)["count"] == 2
