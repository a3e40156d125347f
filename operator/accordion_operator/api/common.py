"""Shared building blocks: the camelCase base model and bounded scalar types.

Every string and list carries a bound (maxLength/maxItems) so that the apiserver can estimate the
cost of the CEL rules and so that no field can grow without limit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "accordion.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Kubernetes resource quantity (e.g. `500m`, `2Gi`), the same pattern the apiserver uses.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: label keys: optional DNS prefix + name (validated loosely; the apiserver validates pods fully).
LABEL_KEY_PATTERN = r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"

#: C0 control characters and DEL. No spec string has a use for them, and a value holding one
#: breaks what it reaches (an S3 prefix with a NUL: the pods never start; environment variables,
#: ssh command lines, log lines). `\xHH` escapes read the same in ECMA-262, in the apiserver's RE2
#: and in pydantic's Rust regex, and keep the generated YAML free of raw control bytes.
CONTROL_CHARS = r"\x00-\x1f\x7f"
TEXT_PATTERN = rf"^[^{CONTROL_CHARS}]*$"
#: A command may be a script: tab and newline are allowed, every other control character is not.
COMMAND_PATTERN = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"


def object_path_pattern(excluded: str, *, leading_slash: bool) -> str:
    """`/`-separated segments without the characters `excluded` (a character-class body), none
    of them `.` or `..`: such a segment navigates instead of naming (joined to a directory, as
    standalone results and stage-in do, `..` climbs out of it) and MinIO refuses object names
    that hold one, so a run would find nothing or write nowhere.

    The apiserver's RE2 has no lookahead, so "a segment other than `.` and `..`" is spelled out:
    one that starts with a non-dot, with a dot and a non-dot, or with two dots and more. Empty
    segments (`a//b`, a trailing `/`) stay allowed; a leading `/` only if `leading_slash`."""
    char, non_dot = f"[^/{excluded}]", f"[^/.{excluded}]"
    segment = rf"({non_dot}{char}*|\.{non_dot}{char}*|\.\.{char}+)"
    first = f"{segment}?" if leading_slash else segment
    return f"^{first}(/{segment}?)*$"


Quantity = Annotated[str, Field(max_length=32, pattern=QUANTITY_PATTERN)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
ShortText = Annotated[str, Field(max_length=256)]
#: Any spec string that has no stricter pattern; bound it with a further `Field(max_length=...)`.
Text = Annotated[str, Field(pattern=TEXT_PATTERN)]
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[Text, Field(max_length=63)]


def cel(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    """One `x-kubernetes-validations` entry: every rule carries a human message."""
    return {"rule": rule, "message": message, **extra}


class ApiModel(BaseModel):
    """Base for API objects: camelCase on the wire, snake_case in Python, unknown keys kept out."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A `metav1.Condition`: the standard Kubernetes condition shape."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    status: ConditionStatus
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: Annotated[str, Field(max_length=64)]
    observed_generation: Annotated[int, Field(ge=0)] | None = None


class ObjectMeta(ApiModel):
    """The part of `metadata` the operator reads."""

    name: str
    namespace: str = ""
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    labels: dict[str, str] = {}
