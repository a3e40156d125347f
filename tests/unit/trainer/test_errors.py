"""Exit codes, termination messages and the S3 error mapping (docs/contract.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from accordion_trainer.errors import Reason, TrainerError, fail, parse_error_line
from accordion_trainer.staging import classify


def test_exit_codes_match_the_contract() -> None:
    table = {r.name: r.value for r in Reason}
    assert table == {
        "DataUnreachable": 10,
        "DataAccessDenied": 11,
        "DataNotFound": 12,
        "DataUnreadable": 13,
        "ModelInvalid": 14,
        "TrainingDiverged": 15,
        "TrainingError": 1,
    }


def test_fail_writes_one_line_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("ACCORDION_TERMINATION_LOG", str(log))
    code = fail(TrainerError(Reason.DataAccessDenied, "s3://b/p: access denied\n(InvalidKey)"))
    assert code == 11
    assert log.read_text() == "DataAccessDenied: s3://b/p: access denied (InvalidKey)\n"
    # The stdout copy is what the launcher reads back from a worker through horovodrun.
    line = "[1]<stdout>:" + capsys.readouterr().out.strip()
    err = parse_error_line(line)
    assert err is not None
    assert err.reason is Reason.DataAccessDenied
    assert "access denied" in err.message


def test_parse_error_line_ignores_other_lines() -> None:
    assert parse_error_line("[0]<stdout>:epoch 1") is None
    assert parse_error_line("ACCORDION_ERROR NoSuchReason x") is None


class FakeS3Error(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class MaxRetryError(Exception):
    """Named like urllib3's: classify matches by class name, not by import."""


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (FakeS3Error("InvalidAccessKeyId"), Reason.DataAccessDenied),
        (FakeS3Error("SignatureDoesNotMatch"), Reason.DataAccessDenied),
        (FakeS3Error("AccessDenied"), Reason.DataAccessDenied),
        (FakeS3Error("NoSuchBucket"), Reason.DataNotFound),
        (FakeS3Error("NoSuchKey"), Reason.DataNotFound),
        (MaxRetryError("refused"), Reason.DataUnreachable),
        (ConnectionRefusedError("refused"), Reason.DataUnreachable),
        (ValueError("boom"), Reason.TrainingError),
    ],
)
def test_s3_errors_map_to_reasons(exc: Exception, reason: Reason) -> None:
    assert classify(exc, "s3://b/p").reason is reason
