"""The storage preflight's pure half (trainingrun/preflight.py): which listings a run needs and
what each answer means for its admission; and how storage.py classifies a client error."""

from __future__ import annotations

import pytest
from minio.error import S3Error, ServerError
from trainingrun_factory import make_run

from accordion_operator.api.trainingrun import (
    REASON_BUCKET_NOT_FOUND,
    REASON_DATA_DENIED,
    REASON_DATA_NOT_FOUND,
    REASON_RESULTS_DENIED,
)
from accordion_operator.trainingrun.observe import SecretInfo
from accordion_operator.trainingrun.preflight import (
    DATA,
    RESULTS,
    Outcome,
    Probe,
    ProbeResult,
    probes_for,
    retry_delay,
    storage_verdict,
)
from accordion_operator.trainingrun.storage import classify

KEYS = frozenset({"accessKey", "secretKey"})
SECRETS = {"s3": SecretInfo(KEYS, "7"), "reader": SecretInfo(KEYS, "9")}
DATA_SPEC = {
    "endpoint": "data.example:9000",
    "bucket": "datasets",
    "prefix": "/mnist/",
    "secure": True,
    "credentialsSecret": {"name": "reader"},
}


def test_a_run_needs_its_data_prefix_and_its_namespace_folder_of_the_results_bucket() -> None:
    run = make_run(spec={"data": DATA_SPEC, "results": {"prefix": "runs/"}})
    data, results = probes_for(run, SECRETS)
    assert data == Probe(
        "team-a", DATA, "data.example:9000", True, "datasets", "mnist", "reader", "9"
    )
    # the namespace's folder, not the run's: every run of the namespace shares the answer
    assert results == Probe(
        "team-a", RESULTS, "minio:9000", False, "results", "runs/team-a/", "s3", "7"
    )
    assert probes_for(make_run(), SECRETS)[0].prefix == "team-a/"


def test_runs_on_one_bucket_share_their_listings_and_a_changed_secret_makes_new_ones() -> None:
    a = make_run(metadata={"name": "a", "uid": "u-a"})
    b = make_run(metadata={"name": "b", "uid": "u-b"})
    assert probes_for(a, SECRETS) == probes_for(b, SECRETS)
    rotated = {"s3": SecretInfo(KEYS, "8")}
    assert probes_for(a, rotated) != probes_for(a, SECRETS)


def _answers(*outcomes: tuple[Outcome, str]) -> list[tuple[Probe, ProbeResult]]:
    run = make_run(spec={"data": DATA_SPEC})
    return [
        (p, ProbeResult(o, d)) for p, (o, d) in zip(probes_for(run, SECRETS), outcomes, strict=True)
    ]


OK = (Outcome.OK, "")


@pytest.mark.parametrize(
    ("data", "results", "reason", "words"),
    [
        (
            OK,
            (Outcome.NO_BUCKET, "NoSuchBucket"),
            REASON_BUCKET_NOT_FOUND,
            ["spec.results.bucket", "'results'", "http://minio:9000", "create it"],
        ),
        (
            (Outcome.NO_BUCKET, "NoSuchBucket"),
            OK,
            REASON_BUCKET_NOT_FOUND,
            ["spec.data.bucket", "'datasets'", "https://data.example:9000"],
        ),
        (
            (Outcome.NO_OBJECTS, ""),
            OK,
            REASON_DATA_NOT_FOUND,
            ["spec.data.prefix", "s3://datasets/mnist", "upload"],
        ),
        (
            (Outcome.DENIED, "InvalidAccessKeyId"),
            OK,
            REASON_DATA_DENIED,
            ["spec.data.credentialsSecret", "Secret team-a/reader", "InvalidAccessKeyId"],
        ),
        (
            OK,
            (Outcome.DENIED, "AccessDenied"),
            REASON_RESULTS_DENIED,
            ["spec.results.credentialsSecret", "Secret team-a/s3", "s3:PutObject"],
        ),
    ],
)
def test_each_negative_answer_is_a_reason_with_an_actionable_message(
    data: tuple[Outcome, str], results: tuple[Outcome, str], reason: str, words: list[str]
) -> None:
    verdict = storage_verdict(_answers(data, results))
    assert verdict is not None
    assert verdict[0] == reason
    for word in words:
        assert word in verdict[1]
    assert "admitted once" in verdict[1]  # the user knows nothing else is needed


def test_what_says_nothing_about_the_bucket_holds_nothing_back() -> None:
    unreachable = (Outcome.INCONCLUSIVE, "MaxRetryError: ... NameResolutionError")
    assert storage_verdict(_answers(unreachable, unreachable)) is None
    assert storage_verdict(_answers(OK, OK)) is None
    # an inconclusive data answer does not hide a negative results one
    verdict = storage_verdict(_answers(unreachable, (Outcome.NO_BUCKET, "NoSuchBucket")))
    assert verdict is not None
    assert verdict[0] == REASON_BUCKET_NOT_FOUND


def test_negative_answers_are_asked_again_from_10_s_doubling_to_5_min() -> None:
    assert [retry_delay(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]
    assert retry_delay(1000) == 300


def _s3_error(code: str) -> S3Error:
    return S3Error(None, code, "message", "/bucket", "req", "host")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (_s3_error("NoSuchBucket"), Outcome.NO_BUCKET),
        (_s3_error("AccessDenied"), Outcome.DENIED),
        (_s3_error("InvalidAccessKeyId"), Outcome.DENIED),
        (_s3_error("SignatureDoesNotMatch"), Outcome.DENIED),
        (_s3_error("AuthorizationHeaderMalformed"), Outcome.INCONCLUSIVE),
        (ServerError("forbidden", 403), Outcome.DENIED),
        (ServerError("bad gateway", 502), Outcome.INCONCLUSIVE),
        (ConnectionRefusedError("refused"), Outcome.INCONCLUSIVE),
        (TimeoutError("read timed out"), Outcome.INCONCLUSIVE),
    ],
)
def test_client_errors_are_classified(exc: BaseException, outcome: Outcome) -> None:
    assert classify(exc).outcome is outcome
