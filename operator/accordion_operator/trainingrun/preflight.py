"""The storage preflight's pure half: which object-store listings a run needs before its first
pods (`probes_for`), and what their answers mean for its admission (`storage_verdict`).

The listings themselves (I/O, bounded, outside the pass) are trainingrun/storage.py. A missing
bucket or an empty data prefix is then reported before any GPU is held (`Admitted=False`), not
as a launcher that fails minutes later; an answer that says nothing about the bucket (the
endpoint unreachable from the operator, a timeout, a 5xx) holds nothing back: the trainer, which
may reach what the operator cannot, reports what it finds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from accordion_operator.api.trainingrun import (
    REASON_BUCKET_NOT_FOUND,
    REASON_DATA_DENIED,
    REASON_DATA_NOT_FOUND,
    REASON_RESULTS_DENIED,
    ObjectStore,
    TrainingRun,
)
from accordion_operator.trainingrun.observe import SecretInfo

DATA = "spec.data"
RESULTS = "spec.results"
#: a negative answer is asked again after this long, doubling per answer in a row ...
RETRY_FIRST_S = 10.0
#: ... up to this: creating the bucket later admits the run without anyone touching it
RETRY_MAX_S = 300.0


class Outcome(enum.Enum):
    #: the bucket answered the listing (and, for spec.data, holds an object under the prefix)
    OK = "ok"
    NO_BUCKET = "no-bucket"
    #: spec.data only: the bucket exists, nothing under the prefix
    NO_OBJECTS = "no-objects"
    #: the credentials were refused (wrong keys, or no permission to list there)
    DENIED = "denied"
    #: nothing learnt about the bucket: unreachable, timed out, a 5xx, another S3 error
    INCONCLUSIVE = "inconclusive"


#: the answers that keep a run from starting
NEGATIVE = frozenset({Outcome.NO_BUCKET, Outcome.NO_OBJECTS, Outcome.DENIED})


@dataclass(frozen=True)
class Probe:
    """One listing: every run that needs the same one shares its answer (1,000 runs on one
    bucket cost one listing). The Secret's resourceVersion is part of it, so that new keys are
    tried at once rather than after the backoff."""

    namespace: str
    #: DATA or RESULTS: the field whose bucket this is (messages name it)
    field: str
    endpoint: str
    secure: bool
    bucket: str
    #: the key prefix listed ("" = the whole bucket)
    prefix: str
    secret: str
    secret_version: str


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    #: the S3 error code or the transport error, for messages and the log (never a credential)
    detail: str = ""


def probes_for(run: TrainingRun, secrets: Mapping[str, SecretInfo | None]) -> tuple[Probe, ...]:
    """The listings that must succeed before the run's first pods: its data (at least one
    object under the prefix, as the trainer's stage-in lists it) and its results bucket (listed
    under `<prefix>/<namespace>/`, which credentials limited to the namespace's folder may list).
    The results folder of one run is not listed: the answer for one run would then serve no
    other."""
    ns = run.metadata.namespace
    probes = []
    if run.spec.data is not None:
        probes.append(_probe(ns, DATA, run.spec.data, run.spec.data.prefix.strip("/"), secrets))
    base = run.spec.results.prefix.strip("/")
    folder = f"{base}/{ns}/" if base else f"{ns}/"
    probes.append(_probe(ns, RESULTS, run.spec.results, folder, secrets))
    return tuple(probes)


def _probe(
    ns: str, where: str, store: ObjectStore, prefix: str, secrets: Mapping[str, SecretInfo | None]
) -> Probe:
    name = store.credentials_secret.name
    info = secrets.get(name)
    return Probe(
        namespace=ns,
        field=where,
        endpoint=store.endpoint,
        secure=store.secure,
        bucket=store.bucket,
        prefix=prefix,
        secret=name,
        secret_version=info.resource_version if info is not None else "",
    )


def storage_verdict(answers: Sequence[tuple[Probe, ProbeResult]]) -> tuple[str, str] | None:
    """(reason, actionable message) for the first negative answer, in the order of
    `probes_for` (data before results); None when none is negative (inconclusive ones
    included: the run proceeds and the trainer reports)."""
    for probe, result in answers:
        problem = _problem(probe, result)
        if problem is not None:
            return problem
    return None


def _problem(probe: Probe, result: ProbeResult) -> tuple[str, str] | None:
    where, bucket = probe.field, probe.bucket
    at = f"{'https' if probe.secure else 'http'}://{probe.endpoint}"
    location = f"s3://{bucket}/{probe.prefix}"
    again = "checked again with backoff, at least every 5 min"
    if result.outcome is Outcome.NO_BUCKET:
        return (
            REASON_BUCKET_NOT_FOUND,
            f"{where}.bucket: bucket {bucket!r} does not exist at {at}; create it, or correct "
            f"{where}.bucket or {where}.endpoint; the run is admitted once it exists ({again})",
        )
    if result.outcome is Outcome.NO_OBJECTS:
        return (
            REASON_DATA_NOT_FOUND,
            f"{where}.prefix: no object under {location} at {at}; upload the data set there, "
            f"or correct {where}.prefix; the run is admitted once an object is there ({again})",
        )
    if result.outcome is Outcome.DENIED:
        reason, needs = (
            (REASON_DATA_DENIED, "s3:ListBucket and s3:GetObject")
            if where == DATA
            else (REASON_RESULTS_DENIED, "s3:ListBucket, s3:GetObject and s3:PutObject")
        )
        return (
            reason,
            f"{where}.credentialsSecret: {at} refused the keys of Secret "
            f"{probe.namespace}/{probe.secret} listing {location} ({result.detail}); correct "
            f"the keys, or grant them {needs} there; the run is admitted once the listing "
            f"succeeds ({again})",
        )
    return None


def retry_delay(failures: int, first: float = RETRY_FIRST_S) -> float:
    """Seconds before a negative answer is asked again, after `failures` in a row (>= 1)."""
    return float(min(first * 2 ** min(failures - 1, 16), RETRY_MAX_S))
