"""The storage preflight's I/O: lists a run's buckets before its first pods, outside the pass.

Why outside: one pass decides every run of the cluster, and an object store that answers
slowly (a tarpit endpoint any run author may name) would hold every other namespace's
admissions behind it. So the pass only reads answers (`StoragePreflight.verdict`, no I/O): a
run whose answer is not in yet is left as it is, without a status write, and each answer wakes
the loop when it comes. What the answers mean is trainingrun/preflight.py (pure).

Bounds, so that one tenant cannot starve the others:
- at most `NAMESPACE_PROBES` listings of one namespace at a time, and `GLOBAL_PROBES` in all;
  a namespace waits for its own slot before it takes a global one, so a namespace that names a
  tarpit holds at most its own share;
- a listing that has not answered within `PROBE_TIMEOUT_S` counts as inconclusive (the run
  proceeds). Its thread cannot be interrupted; it keeps its slots until urllib3's own timeouts
  end it, so the threads in use never exceed `GLOBAL_PROBES`;
- runs that need the same listing (namespace, endpoint, bucket, prefix, Secret and its
  resourceVersion) share one: 1,000 runs on one bucket cost one;
- a negative answer is asked again with backoff (preflight.retry_delay: 10 s doubling to
  5 min) while runs wait on it; a run whose listings all passed keeps that verdict for its
  life (its uid and its listings, which include the Secrets' resourceVersions), and a run that
  has started is never checked (the controller asks only for runs without status.startTime).

The Secret's values are read here, for the listing only: they never reach a log line, an Event
or the run's status (messages name the Secret, and S3 error codes).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import aiohttp

from accordion_operator.core.kube import ApiError, Kube
from accordion_operator.trainingrun import builders
from accordion_operator.trainingrun.preflight import (
    DATA,
    NEGATIVE,
    RETRY_FIRST_S,
    Outcome,
    Probe,
    ProbeResult,
    retry_delay,
    storage_verdict,
)

log = logging.getLogger("accordion.storage")

#: listings in flight at once, all namespaces together (and the threads that make them)
GLOBAL_PROBES = 16
#: listings of one namespace in flight at once
NAMESPACE_PROBES = 2
#: seconds a listing may take before it counts as inconclusive
PROBE_TIMEOUT_S = 5.0
#: seconds a passing answer serves runs that arrive after it; later arrivals list again
SHARE_S = 60.0
#: S3 error codes that mean "these keys may not do this" (the trainer's staging.DENIED_CODES)
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
    }
)


class Check(enum.Enum):
    #: the run's listings have not answered yet: leave the run as it is this pass
    PENDING = "pending"


PENDING = Check.PENDING
#: one blocking listing: (probe, access key, secret key, timeout) -> its answer
Lister = Callable[[Probe, str, str, float], ProbeResult]


def list_store(probe: Probe, access_key: str, secret_key: str, timeout_s: float) -> ProbeResult:
    """Lists at most one object under the probe's prefix, as the trainer's client would (same
    client, no region: it asks the bucket's location first). Blocking: run it in a thread."""
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=False, maxsize=1
    )
    try:
        client = Minio(
            probe.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=probe.secure,
            http_client=http,
        )
        listing = client.list_objects(probe.bucket, prefix=probe.prefix or None, recursive=True)
        first = next(iter(listing), None)
    except Exception as exc:  # every failure is an answer; classify says which
        return classify(exc)
    finally:
        http.clear()
    if first is None and probe.field == DATA:
        return ProbeResult(Outcome.NO_OBJECTS)
    return ProbeResult(Outcome.OK)


def classify(exc: BaseException) -> ProbeResult:
    """What a failed listing says about the bucket (no I/O)."""
    from minio.error import S3Error, ServerError

    if isinstance(exc, S3Error):
        if exc.code == "NoSuchBucket":
            return ProbeResult(Outcome.NO_BUCKET, exc.code)
        if exc.code in DENIED_CODES:
            return ProbeResult(Outcome.DENIED, exc.code)
        return ProbeResult(Outcome.INCONCLUSIVE, f"S3 error {exc.code}")
    if isinstance(exc, ServerError) and exc.status_code in (401, 403):
        return ProbeResult(Outcome.DENIED, f"HTTP {exc.status_code}")
    return ProbeResult(Outcome.INCONCLUSIVE, f"{type(exc).__name__}: {exc}"[:300])


@dataclass
class _Entry:
    """One listing's last answer, shared by every run that needs it."""

    result: ProbeResult | None = None
    #: when it came
    at: float = 0.0
    #: negative answers in a row (the backoff)
    failures: int = 0
    #: the listing in flight, if any
    task: asyncio.Task[None] | None = None


@dataclass
class StoragePreflight:
    kube: Kube
    #: wakes the controller's loop (an answer came)
    wake: Callable[[], None]
    clock: Callable[[], float] = time.time
    lister: Lister = list_store
    global_limit: int = GLOBAL_PROBES
    namespace_limit: int = NAMESPACE_PROBES
    timeout_s: float = PROBE_TIMEOUT_S
    retry_first_s: float = RETRY_FIRST_S
    _entries: dict[Probe, _Entry] = field(default_factory=dict)
    #: run uid -> the listings that all passed for it: its verdict for its life
    _passed: dict[str, tuple[Probe, ...]] = field(default_factory=dict)
    #: what `verdict` was asked about since the last `sweep`
    _asked: set[Probe] = field(default_factory=set)
    _asked_uids: set[str] = field(default_factory=set)
    _global: asyncio.Semaphore = field(init=False)
    #: per namespace: its slots, and how many of them are held
    _namespaces: dict[str, tuple[asyncio.Semaphore, list[int]]] = field(default_factory=dict)
    _executor: ThreadPoolExecutor = field(init=False)
    #: (namespace, endpoint) already logged as not answering
    _logged: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._global = asyncio.Semaphore(self.global_limit)
        self._executor = ThreadPoolExecutor(self.global_limit, "accordion-storage")

    def verdict(
        self, uid: str, probes: tuple[Probe, ...], now: float
    ) -> tuple[str, str] | Check | None:
        """(reason, message) when a listing says the run cannot work; None when it may start;
        PENDING while an answer is missing (the listing is started here, in the background).
        A known negative answer stands while it is asked again."""
        self._asked_uids.add(uid)
        if self._passed.get(uid) == probes:
            return None
        answers: list[tuple[Probe, ProbeResult]] = []
        pending = False
        for probe in probes:
            self._asked.add(probe)
            entry = self._entries.setdefault(probe, _Entry())
            result = entry.result
            if entry.task is None and (result is None or now >= self._due(entry)):
                entry.task = asyncio.create_task(self._probe(probe, entry))
            if result is None or (result.outcome not in NEGATIVE and now > entry.at + SHARE_S):
                pending = True  # no answer yet, or a passing one too old for a newcomer
            else:
                answers.append((probe, result))
        found = storage_verdict(answers)
        if found is not None:
            return found
        if pending:
            return PENDING
        self._passed[uid] = probes
        return None

    def due_in(self, now: float) -> float | None:
        """Seconds until a negative answer that runs wait on is to be asked again."""
        dues = [
            self._due(e) - now
            for p, e in self._entries.items()
            if p in self._asked and e.task is None and e.result and e.result.outcome in NEGATIVE
        ]
        return max(0.0, min(dues)) if dues else None

    def sweep(self) -> None:
        """After each pass: forget the answers and verdicts no run asked about in it."""
        self._entries = {
            p: e for p, e in self._entries.items() if p in self._asked or e.task is not None
        }
        self._passed = {u: p for u, p in self._passed.items() if u in self._asked_uids}
        self._asked, self._asked_uids = set(), set()
        busy = {p.namespace for p, e in self._entries.items() if e.task is not None}
        self._namespaces = {
            ns: slots for ns, slots in self._namespaces.items() if ns in busy or slots[1][0]
        }

    async def close(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _due(self, entry: _Entry) -> float:
        assert entry.result is not None
        if entry.result.outcome in NEGATIVE:
            return entry.at + retry_delay(entry.failures, self.retry_first_s)
        return entry.at + SHARE_S

    async def _probe(self, probe: Probe, entry: _Entry) -> None:
        try:
            result = await self._ask(probe)
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:  # reading the Secret
            result = ProbeResult(Outcome.INCONCLUSIVE, f"reading Secret {probe.secret}: {exc}")
        except Exception as exc:  # never let one listing's trouble go unanswered
            log.exception("storage preflight of %s failed", _where(probe))
            result = ProbeResult(Outcome.INCONCLUSIVE, repr(exc))
        finally:
            entry.task = None
        entry.result, entry.at = result, self.clock()
        entry.failures = entry.failures + 1 if result.outcome in NEGATIVE else 0
        if result.outcome is Outcome.INCONCLUSIVE and (probe.namespace, probe.endpoint) not in (
            self._logged
        ):
            self._logged.add((probe.namespace, probe.endpoint))
            log.info(
                "storage preflight: %s gave no usable answer (%s); runs that use it start "
                "unchecked, and the trainer reports what it finds",
                _where(probe),
                result.detail,
            )
        else:
            log.debug("storage preflight: %s: %s %s", _where(probe), result.outcome, result.detail)
        self.wake()

    async def _ask(self, probe: Probe) -> ProbeResult:
        slots, held = self._namespaces.setdefault(
            probe.namespace, (asyncio.Semaphore(self.namespace_limit), [0])
        )
        await slots.acquire()
        held[0] += 1

        def release(_: object = None) -> None:
            held[0] -= 1
            slots.release()

        try:
            await self._global.acquire()
        except BaseException:
            release()
            raise

        def release_all(_: object = None) -> None:
            self._global.release()
            release()

        try:
            values = await self.kube.secret_values(probe.namespace, probe.secret) or {}
            access, secret = values.get(builders.ACCESS_KEY), values.get(builders.SECRET_KEY)
            if not access or not secret:  # check_run reports the Secret on the next pass
                release_all()
                return ProbeResult(Outcome.INCONCLUSIVE, f"Secret {probe.secret} incomplete")
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(
                self._executor, self.lister, probe, access, secret, self.timeout_s
            )
        except BaseException:
            release_all()
            raise
        # The slots go back when the thread is done, not at the timeout: a thread cannot be
        # stopped, and a namespace's stuck listings must not take more threads than its share.
        future.add_done_callback(release_all)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            return ProbeResult(Outcome.INCONCLUSIVE, f"no answer within {self.timeout_s:g} s")


def _where(probe: Probe) -> str:
    scheme = "https" if probe.secure else "http"
    return (
        f"{probe.field} of namespace {probe.namespace} "
        f"({scheme}://{probe.endpoint}/{probe.bucket}/{probe.prefix})"
    )
