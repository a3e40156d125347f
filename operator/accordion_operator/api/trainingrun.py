"""TrainingRun (`accordion.dev/v1alpha1`): spec and status models.

These models are the single source of truth: `accordion_operator.crd` renders the CRD's
OpenAPI schema from them (plus the CEL rules declared here), and the operator parses every object
it reads through them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from accordion_operator.api.common import (
    COMMAND_PATTERN,
    CONTROL_CHARS,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    Condition,
    DnsLabel,
    LabelKey,
    LabelValue,
    ObjectMeta,
    Quantity,
    ShortText,
    Text,
    cel,
    object_path_pattern,
)

KIND = "TrainingRun"
PLURAL = "trainingruns"
SINGULAR = "trainingrun"
SHORT_NAMES = ("tr",)

MAX_WORKERS = 1024
#: a worker with N GPUs runs N training processes (Horovod slots)
MAX_GPUS_PER_WORKER = 16

# --- condition types and reasons (documented constants; `kubectl describe` shows them) -----------

#: Condition types, positive CamelCase.
COND_ADMITTED = "Admitted"
COND_RUNNING = "Running"
COND_SCALING = "Scaling"
COND_SUSPENDED = "Suspended"
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
CONDITION_TYPES = (
    COND_ADMITTED,
    COND_RUNNING,
    COND_SCALING,
    COND_SUSPENDED,
    COND_SUCCEEDED,
    COND_FAILED,
)

#: Admitted=True: the allocator granted at least the run's minimum workers.
REASON_GANG_ADMITTED = "MinimumWorkersFit"
#: Admitted=False: the minimum does not fit the free GPUs yet; the run waits in its priority's FIFO.
REASON_QUEUED = "WaitingForGPUs"
#: Admitted=False: a higher-priority run needed the GPUs of this run's minimum (last resort).
REASON_PREEMPTED = "PreemptedByHigherPriority"
#: Admitted=False: no schedulable node matches the run's placement constraints at all.
REASON_UNSCHEDULABLE = "NoMatchingNodes"
#: Admitted=False: spec.priorityClassName names no PriorityClass of the cluster.
REASON_PRIORITY_CLASS_NOT_FOUND = "PriorityClassNotFound"
#: Admitted=False: a ResourceQuota of the namespace can never admit the run's minimum (its hard
#: limit on pods or GPUs, for the run's priority class, is below what the minimum needs).
REASON_QUOTA_EXCEEDED = "QuotaExceeded"
#: Admitted=False: the credentials Secret named in spec.data/spec.results is missing or incomplete.
REASON_SECRET_MISSING = "CredentialsSecretNotFound"  # noqa: S105 - a reason, no secret
REASON_SECRET_INVALID = "CredentialsSecretInvalid"  # noqa: S105 - a reason, no secret
#: Admitted=False: spec.model.builtin names a model the trainer does not ship.
REASON_UNKNOWN_MODEL = "UnknownBuiltinModel"
#: Admitted=False: a hyperparameter name or value is not a string/number (schema cannot say).
REASON_INVALID_HPARAMS = "InvalidHyperparameters"
#: Admitted=False, from the storage preflight before the first pods (trainingrun/preflight.py):
#: spec.data's or spec.results' bucket does not exist ...
REASON_BUCKET_NOT_FOUND = "BucketNotFound"
#: ... no object under spec.data's prefix ...
REASON_DATA_NOT_FOUND = "DataNotFound"
#: ... or the object store refused the keys of the data or the results credentialsSecret.
REASON_DATA_DENIED = "DataAccessDenied"
REASON_RESULTS_DENIED = "ResultsAccessDenied"
#: Admitted=False: spec.suspend is true.
REASON_SUSPENDED = "Suspended"
#: Suspended=False: the run is not suspended.
REASON_NOT_SUSPENDED = "NotSuspended"
#: Running=True: launcher up and at least `min` workers ready.
REASON_TRAINING = "Training"
#: Running=False: waiting for pods to start (scheduling, image pull, data stage-in).
REASON_STARTING = "WorkersStarting"
#: Running=False: pods cannot pull their image.
REASON_IMAGE_PULL = "ImagePullFailed"
#: Running=False: the apiserver refuses to create a child pod (Pod Security admission, a quota, a
#: webhook, a name taken by a pod the run does not control); the message is the apiserver's
REASON_CREATE_FAILED = "PodCreationFailed"
#: Running=False: the launcher exited with an error and waits for its backoff to restart.
REASON_LAUNCHER_BACKOFF = "LauncherBackoff"
#: Running=False: not admitted, suspended or finished.
REASON_NOT_RUNNING = "NotRunning"
#: Scaling=True: current workers differ from what the allocator grants.
REASON_SCALING_UP = "ScalingUp"
REASON_SCALING_DOWN = "ScalingDown"
#: Scaling=False: current == desired.
REASON_STABLE = "Stable"
#: Succeeded=True: the launcher exited 0 (training finished, results written).
REASON_COMPLETED = "TrainingCompleted"
#: Failed=True reasons: the launcher exceeded spec.backoffLimit restarts, ...
REASON_BACKOFF_LIMIT = "BackoffLimitExceeded"
#: ... fewer than `min` workers ready for longer than spec.workers.minAvailableTimeoutSeconds, ...
REASON_BELOW_MIN = "BelowMinimumWorkers"
#: Failed: no training progress for spec.progressDeadlineSeconds, again after a restart
REASON_STALLED = "Stalled"
#: ... or the trainer reported a permanent error (exit codes of the contract, e.g. DataNotFound).
#: TrainingDiverged too: a restart resumes from the last checkpoint with the same hyperparameters
#: and data order, and diverges again.
PERMANENT_TRAINER_REASONS = frozenset(
    {"DataAccessDenied", "DataNotFound", "DataUnreadable", "ModelInvalid", "TrainingDiverged"}
)
#: Succeeded/Failed=False while the run is not finished.
REASON_IN_PROGRESS = "InProgress"

Phase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"]
FINISHED_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})

# --- spec ----------------------------------------------------------------------------------------

HParamValue = Annotated[str, Field(max_length=1024)] | int | float


class SecretRef(ApiModel):
    """A Secret in the run's namespace with keys `accessKey` and `secretKey`."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]


class ObjectStore(ApiModel):
    """A MinIO/S3 location. Credentials always come from a Secret, never inline."""

    endpoint: Annotated[
        str,
        Field(
            min_length=1,
            max_length=253,
            pattern=r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$",
            description="host[:port] of the S3 API, without scheme (see `secure`)",
        ),
    ]
    bucket: Annotated[
        str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    ]
    prefix: Annotated[
        str,
        Field(
            max_length=512,
            # a leading or trailing `/` is harmless: the trainer strips both off a prefix;
            # `\x20` (space) rather than " ": YAML would fold the long pattern at a space
            pattern=object_path_pattern(r"\x20" + CONTROL_CHARS, leading_slash=True),
            description="key prefix; no spaces, control characters, `.` or `..` segments",
        ),
    ] = ""
    secure: bool = Field(default=False, description="use https")
    credentials_secret: SecretRef


class ModelSource(ApiModel):
    """What to train: a built-in model, or user code from a bucket object or a path in the image."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.builtin), has(self.bucketObject), has(self.path)]"
                    ".filter(x, x).size() == 1",
                    "set exactly one of model.builtin, model.bucketObject, model.path",
                ),
                cel(
                    "has(self.builtin) != has(self.command)",
                    "model.command is required with bucketObject/path and not allowed with builtin",
                ),
            ]
        }
    )

    builtin: DnsLabel | None = Field(default=None, description="built-in model, e.g. mnist-cnn")
    # A leading `/` would leave the trainer an empty bucket name (it reads `<bucket>/<key>`).
    bucket_object: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=1024,
                pattern=object_path_pattern(CONTROL_CHARS, leading_slash=False),
            ),
        ]
        | None
    ) = Field(
        default=None,
        description="object key of the user's code archive in the data bucket (spec.data); "
        "no leading `/`, control characters, `.` or `..` segments",
    )
    # The image is the user's own: `..` in it reaches nothing the image does not hold.
    path: (
        Annotated[str, Field(min_length=2, max_length=1024, pattern=rf"^/[^{CONTROL_CHARS}]*$")]
        | None
    ) = Field(default=None, description="absolute path of the user's code inside the trainer image")
    command: (
        Annotated[str, Field(min_length=1, max_length=4096, pattern=COMMAND_PATTERN)] | None
    ) = Field(default=None, description="command that runs the user's training code")


class Workers(ApiModel):
    """Elastic worker bounds; one worker pod = one Horovod slot."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.min <= self.max", "workers.min must be <= workers.max"),
                cel(
                    "!has(self.replicas) || (self.replicas >= self.min && "
                    "self.replicas <= self.max)",
                    "workers.replicas (kubectl scale) must be within [workers.min, workers.max]",
                ),
            ]
        }
    )

    min: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1
    max: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 1
    replicas: Annotated[int, Field(ge=1, le=MAX_WORKERS)] | None = Field(
        default=None,
        description="workers the user asks for (the scale subresource); defaults to max",
    )
    gpus_per_worker: Annotated[int, Field(ge=0, le=MAX_GPUS_PER_WORKER)] = 1
    cpu: Quantity = "1"
    memory: Quantity = "4Gi"
    min_available_timeout_seconds: Annotated[int, Field(ge=10, le=86400)] = Field(
        default=600,
        description="fail the run when fewer than min workers are ready for this long",
    )

    @property
    def requested(self) -> int:
        return self.replicas if self.replicas is not None else self.max


class Toleration(ApiModel):
    """A pod toleration (core/v1 shape)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                    "a toleration with operator Exists must not have a value",
                ),
                cel(
                    "has(self.key) || self.operator == 'Exists'",
                    "a toleration without key must use operator Exists",
                ),
            ]
        }
    )

    key: LabelKey | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int, Field(ge=0, le=31536000)] | None = None


class NodeSelectorRequirement(ApiModel):
    """A node label requirement (core/v1 shape)."""

    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: Annotated[list[LabelValue], Field(max_length=32)] = []


class NodeSelectorTerm(ApiModel):
    match_expressions: Annotated[list[NodeSelectorRequirement], Field(min_length=1, max_length=16)]


class RequiredNodeSelector(ApiModel):
    node_selector_terms: Annotated[list[NodeSelectorTerm], Field(min_length=1, max_length=8)]


class NodeAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: RequiredNodeSelector | None = None


class Affinity(ApiModel):
    """Node affinity for the worker pods (required terms; the allocator honours them too)."""

    node_affinity: NodeAffinity | None = None


LABEL_MAP_RULE = cel(
    "self.all(k, size(k) <= 317)", "node selector keys must be at most 317 characters"
)
HPARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
#: Hyperparameters the trainer reads itself (trainer/README.md), so a bad value would fail the run
#: only once its pods run; `trainingrun/checks.py` refuses one before the run starts. The learning
#: rate (`lr` is the trainer's fallback name for it) is a number > 0, the optimizer one it builds.
LEARNING_RATE_HPARAMS = ("learning_rate", "lr")
OPTIMIZER_HPARAM = "optimizer"
OPTIMIZERS = ("adam", "rmsprop", "sgd")


class TrainingRunSpec(ApiModel):
    """An elastic Horovod training run."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.model.bucketObject) || has(self.data)",
                    "model.bucketObject needs spec.data (the bucket and credentials to read it)",
                ),
            ]
        }
    )

    image: Annotated[Text, Field(min_length=1, max_length=512)] | None = Field(
        default=None,
        description="trainer image; defaults to the operator's ACCORDION_TRAINER_IMAGE",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    model: ModelSource
    # A string-or-number value has no structural OpenAPI type, and the apiserver can neither
    # compile CEL over such a map nor keep untyped values of a typed map. So the map keeps its
    # values unchecked (bounded by maxProperties) and the operator validates names and values,
    # reporting a bad one in status (reason InvalidHyperparameters).
    hyperparameters: Annotated[
        dict[Annotated[str, Field(max_length=63, pattern=HPARAM_NAME_PATTERN)], HParamValue],
        Field(
            max_length=64,
            json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        ),
    ] = {}
    epochs: Annotated[int, Field(ge=1, le=100000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    checkpoint_epochs: Annotated[int, Field(ge=1, le=10000)] = Field(
        default=1, description="write a checkpoint every this many epochs"
    )
    data: ObjectStore | None = Field(default=None, description="where the training data is")
    results: ObjectStore = Field(description="where checkpoints and the model go")
    workers: Workers = Workers()
    node_selector: Annotated[
        dict[LabelKey, LabelValue],
        Field(max_length=32, json_schema_extra={"x-kubernetes-validations": [LABEL_MAP_RULE]}),
    ] = {}
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = []
    affinity: Affinity | None = None
    # Not a free integer: any run author could then preempt every namespace's runs. The value
    # comes from the cluster-scoped PriorityClass, which only cluster admins create; who may
    # use a class is the namespace's ResourceQuota scopes (docs/trainingrun.md "Priority").
    priority_class_name: (
        Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)] | None
    ) = Field(
        default=None,
        description="the PriorityClass whose value orders this run against others; unset = the "
        "cluster's globalDefault class, else 0",
    )
    suspend: bool = False
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = Field(
        default=3, description="launcher restarts before the run fails"
    )
    progress_deadline_seconds: Annotated[int, Field(ge=0, le=604800)] | None = Field(
        default=None,
        description="seconds a running run may report no training progress before its launcher "
        "is restarted from the last checkpoint, and then before it fails as Stalled; 0 = never; "
        "unset = the operator's default (ACCORDION_PROGRESS_DEADLINE_SECONDS)",
    )
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=31536000)] | None = None


#: Spec fields that cannot change once the run has started (status.startTime set).
IMMUTABLE_AFTER_START = (
    "image",
    "model",
    "data",
    "results",
    "epochs",
    "batchSize",
)

# --- status --------------------------------------------------------------------------------------

MetricMap = Annotated[
    dict[Annotated[str, Field(max_length=63)], float],
    Field(max_length=32),
]
Timestamp = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})]
PodNames = Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=MAX_WORKERS)]


class EpochRecord(ApiModel):
    epoch: Annotated[int, Field(ge=0)]
    metrics: MetricMap = {}


class TrainingProgress(ApiModel):
    """Written by the launcher (rank 0) through the status subresource; never by the operator."""

    epoch: Annotated[int, Field(ge=0)] | None = None
    batch: Annotated[int, Field(ge=0)] | None = None
    #: training processes, not pods: one per GPU of each worker in the world
    world_size: Annotated[int, Field(ge=0, le=MAX_WORKERS * MAX_GPUS_PER_WORKER)] | None = None
    metrics: MetricMap = {}
    history: Annotated[list[EpochRecord], Field(max_length=50)] = []
    checkpoint: Annotated[str, Field(max_length=2048)] | None = None
    results_uri: Annotated[str, Field(max_length=2048)] | None = Field(
        default=None, alias="resultsURI"
    )
    updated_at: Timestamp | None = None
    #: The worker pod of Horovod rank 0, which writes checkpoints and the model: a scale-down
    #: removes it last, so that a shrink never interrupts a save.
    rank0_pod: Annotated[str, Field(max_length=253)] | None = None
    #: The worker pods in the Horovod world, in rank order, gathered by the trainer at every
    #: elastic (re)start: a Ready worker left out of it (its training process died and Horovod
    #: dropped its host for good) is replaced after ACCORDION_WORLD_GRACE_SECONDS.
    world_pods: PodNames | None = None
    #: When the trainer last confirmed `worldPods`: the world's last commit, where Horovod
    #: interrupts training to admit a host it discovered (a pod that became Ready before this
    #: and is not in the list was not admitted).
    world_time: Timestamp | None = None


class TrainingRunStatus(ApiModel):
    """Observed state; the operator writes everything except `training`."""

    phase: Phase | None = None
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=16,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        ),
    ] = []
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    current_workers: Annotated[int, Field(ge=0)] | None = None
    desired_workers: Annotated[int, Field(ge=0)] | None = None
    ready_workers: Annotated[int, Field(ge=0)] | None = None
    worker_summary: Annotated[str, Field(max_length=32)] | None = Field(
        default=None, description="current/desired, for `kubectl get`"
    )
    gpus: Annotated[int, Field(ge=0)] | None = None
    selector: Annotated[str, Field(max_length=512)] | None = None
    admitted_time: Timestamp | None = None
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    last_scale_time: Timestamp | None = None
    below_min_since: Timestamp | None = None
    launcher_restarts: Annotated[int, Field(ge=0)] | None = None
    #: launcher restarts because training made no progress (the second stall fails the run)
    stall_restarts: Annotated[int, Field(ge=0)] | None = None
    launcher_failed_time: Timestamp | None = None
    results_uri: Annotated[str, Field(max_length=2048)] | None = Field(
        default=None, alias="resultsURI"
    )
    message: ShortText | None = None
    training: TrainingProgress | None = None


#: Hex digits of the run's uid in its results folder. The namespace and name already keep apart
#: any two runs that exist at once; the uid keeps apart the objects that carried one name in turn
#: (deleted and applied again, deleted by ttlSecondsAfterFinished, trials of a re-created
#: Experiment). Kubernetes uids are random (v4) UUIDs whose first 12 hex digits are all random:
#: 48 bits, so 10,000 objects of one name share a folder with a chance of 2e-7 (birthday bound
#: n^2 / 2^49). 8 digits would make that 1 %, which a CI loop applying the same run every 5 minutes
#: reaches in five weeks, and the newer object would resume the older one's checkpoint.
RESULTS_UID_DIGITS = 12


def results_path(prefix: str, namespace: str, name: str, uid: str) -> str:
    """The key prefix of one run object's results and checkpoints in its results bucket,
    `<prefix>/<namespace>/<name>-<uid digits>` (docs/trainingrun.md, "Results layout"); the
    trainer writes there and resumes only checkpoints found there. At most 640 characters (a
    512-character prefix, a 63-character namespace, a 50-character name): with the longest key
    the trainer writes under it (~55 more), within S3's 1,024-byte keys for an ASCII prefix."""
    folder = f"{namespace}/{name}-{uid.replace('-', '')[:RESULTS_UID_DIGITS]}"
    base = prefix.strip("/")
    return f"{base}/{folder}" if base else folder


class TrainingRun(ApiModel):
    """A whole TrainingRun as the operator reads it."""

    metadata: ObjectMeta
    spec: TrainingRunSpec
    # a factory, not a shared default instance: pydantic deep-copies an unhashable default
    # (a status holds lists) on every parse of a run that has no status yet
    status: TrainingRunStatus = Field(default_factory=TrainingRunStatus)

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def results_path(self) -> str:
        """This run object's folder in `spec.results.bucket` (`results_path`)."""
        meta = self.metadata
        return results_path(self.spec.results.prefix, meta.namespace, meta.name, meta.uid)

    @property
    def results_uri(self) -> str:
        """`s3://<bucket>/<results_path>`: what `status.resultsURI` says from admission on, and
        what the trainer reports (its store's URI)."""
        return f"s3://{self.spec.results.bucket}/{self.results_path}"
