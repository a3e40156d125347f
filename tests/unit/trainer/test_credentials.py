"""Which keys open which store (staging.credentials): each store's own pair from its Secret, else
`AWS_*` (a standalone run). Against a real MinIO: tests/trainer/test_trainer_credentials.py."""

from __future__ import annotations

from accordion_trainer.staging import credentials


def test_a_store_without_its_own_pair_falls_back_to_aws_keys() -> None:
    aws = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    assert credentials(aws, "DATA") == ("a", "b")
    own = {
        **aws,
        "ACCORDION_RESULTS_ACCESS_KEY_ID": "r",
        "ACCORDION_RESULTS_SECRET_ACCESS_KEY": "s",
    }
    assert credentials(own, "RESULTS") == ("r", "s")
    assert credentials(own, "DATA") == ("a", "b")
    assert credentials({}, "DATA") == (None, None)
