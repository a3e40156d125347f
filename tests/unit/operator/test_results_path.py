"""The results layout (docs/trainingrun.md, "Results layout"): one folder per run object,
`<prefix>/<namespace>/<name>-<12 hex digits of its uid>`."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st
from trainingrun_factory import make_run

from accordion_operator.api.trainingrun import RESULTS_UID_DIGITS, results_path
from accordion_operator.crd.trainingrun import MAX_RUN_NAME

UID = "5f0c3a9e-8d21-4b7e-9a43-2c1d0e6f7b8a"
#: the longest key the trainer writes under a run's folder is ~50 characters
#: (`saved_model/variables/variables.data-00000-of-00001`); leave twice that
LONGEST_KEY = 100


def test_the_folder_names_the_namespace_the_run_and_its_uid() -> None:
    assert results_path("runs/", "team-a", "mnist", UID) == "runs/team-a/mnist-5f0c3a9e8d21"
    # the prefix's leading and trailing `/` go, as the trainer strips them off a prefix
    assert results_path("/runs", "team-a", "mnist", UID) == "runs/team-a/mnist-5f0c3a9e8d21"
    assert results_path("", "team-a", "mnist", UID) == "team-a/mnist-5f0c3a9e8d21"
    assert results_path("/", "team-a", "mnist", UID) == "team-a/mnist-5f0c3a9e8d21"


def test_runs_that_share_a_name_do_not_share_a_folder() -> None:
    one = results_path("runs", "team-a", "mnist", UID)
    assert results_path("runs", "team-b", "mnist", UID) != one  # another namespace
    assert results_path("runs", "team-a", "mnist", str(uuid.uuid4())) != one  # re-created


def test_the_folder_is_stable_while_the_run_lives() -> None:
    """Derived from what never changes once the run started (metadata, spec.results, which is
    immutable then), nothing else: every pass and every pod says the same."""
    run = make_run(spec={"results": {"prefix": "runs/"}})
    later = make_run(
        spec={"results": {"prefix": "runs/"}, "workers": {"replicas": 3}, "suspend": True},
        metadata={"generation": 7, "resourceVersion": "99"},
        status={"phase": "Suspended", "training": {"resultsURI": "s3://x/y"}},
    )
    assert run.results_path == later.results_path == "runs/team-a/mnist-5f0c3a9e8d21"
    assert run.results_uri == "s3://results/runs/team-a/mnist-5f0c3a9e8d21"


def test_the_longest_folder_stays_within_s3_key_limits() -> None:
    """S3 keys are at most 1,024 bytes: the longest prefix, namespace and run name the schema
    accepts leave room for every key the trainer writes under the folder."""
    path = results_path("p" * 512, "n" * 63, "r" * MAX_RUN_NAME, UID)
    assert len(path) == 640
    assert len(f"{path}/".encode()) + LONGEST_KEY <= 1024


DNS_LABEL = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")


@given(
    st.tuples(DNS_LABEL, DNS_LABEL, st.uuids(version=4)),
    st.tuples(DNS_LABEL, DNS_LABEL, st.uuids(version=4)),
)
def test_different_runs_get_different_folders(
    a: tuple[str, str, uuid.UUID], b: tuple[str, str, uuid.UUID]
) -> None:
    """Namespace and name hold no `/` and the uid part has a fixed length, so the folder tells
    them apart: equal folders only for equal namespace, name and uid digits."""

    def key(ns: str, name: str, uid: uuid.UUID) -> tuple[str, str, str]:
        return ns, name, uid.hex[:RESULTS_UID_DIGITS]

    same = results_path("runs", *a[:2], str(a[2])) == results_path("runs", *b[:2], str(b[2]))
    assert same == (key(*a) == key(*b))
