"""The CloudEvents 1.0 envelope every jobwire message travels in.

Messages are sent in CloudEvents *structured* mode: the NATS payload is one JSON
object holding the context attributes and ``data``. An external app therefore
needs nothing but a JSON parser to read any jobwire subject. W3C trace context
travels both as NATS headers (for tracing middleware) and as the CloudEvents
distributed-tracing extension attributes ``traceparent``/``tracestate``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

CONTENT_TYPE = "application/cloudevents+json"


class Versioned(BaseModel):
    """Base of every jobwire contract model, nested ones included.

    Frozen, and tolerant of unknown fields so that a v1 reader keeps working
    when a writer adds a field (additive changes stay within a version; a
    breaking change bumps ``version`` and is published side by side).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: ClassVar[int] = 1

    @classmethod
    def schema_uri(cls) -> str:
        return f"urn:jobwire:schema:{cls.__name__}:v{cls.version}"


class Contract(Versioned):
    """Base of every event and command carried as envelope ``data``."""

    # CloudEvents `type`, e.g. "io.jobwire.job.due"; the version is appended.
    event_type: ClassVar[str]

    @classmethod
    def ce_type(cls) -> str:
        return f"{cls.event_type}.v{cls.version}"


DataT = TypeVar("DataT", bound=Contract)


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 event in structured JSON mode.

    Every jobwire message is one of these; ``type`` says which model ``data``
    follows, including its major version.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: Literal["1.0"] = Field(default="1.0", description="CloudEvents version.")
    id: str = Field(
        default_factory=new_id,
        min_length=1,
        description="Unique per event for its source; a re-sent event keeps its id.",
    )
    source: str = Field(
        min_length=1,
        description="URI-reference of the producer, e.g. `jobwire/scheduler` or "
        "`jobwire/listeners/orders-kafka`.",
    )
    type: str = Field(
        min_length=1,
        description="Event type with its major version, e.g. `io.jobwire.job.due.v1`. "
        "A consumer reads only the types and versions it knows.",
    )
    time: AwareDatetime = Field(
        default_factory=utcnow, description="When the event was produced (RFC 3339)."
    )
    subject: str | None = Field(
        default=None,
        description="What the event is about within its source, e.g. the run id.",
    )
    datacontenttype: Literal["application/json"] = Field(
        default="application/json", description="Media type of `data`; always JSON."
    )
    dataschema: str | None = Field(
        default=None,
        description="Identifies the JSON Schema of `data`: the `$id` of a published "
        "schema, e.g. `urn:jobwire:schema:JobDue:v1`.",
    )
    traceparent: str | None = Field(
        default=None,
        description="W3C trace context `traceparent` of the producing span, if traced.",
    )
    tracestate: str | None = Field(
        default=None, description="W3C trace context `tracestate` accompanying `traceparent`."
    )
    data: DataT = Field(description="The event or command itself; its schema depends on `type`.")

    @model_validator(mode="before")
    @classmethod
    def _type_matches_data(cls, event: Any) -> Any:
        # Without this, a v2 event (or another event type) on a v1 consumer's
        # subject could validate as the v1 model and be silently misread.
        # Checked before the fields so that the mismatch is the error reported.
        data_model = cls.model_fields["data"].annotation
        if (
            isinstance(event, dict)
            and "type" in event
            and isinstance(data_model, type)
            and issubclass(data_model, Contract)
            and hasattr(data_model, "event_type")
            and event["type"] != data_model.ce_type()
        ):
            raise ValueError(
                f"type {event['type']!r} does not match {data_model.__name__} "
                f"(expected {data_model.ce_type()!r})"
            )
        return event

    @classmethod
    def wrap(cls, data: DataT, *, source: str, **attributes: Any) -> Envelope[DataT]:
        """Envelope ``data`` with its type and schema taken from its class."""
        # Parameterised by the runtime class so that `data` serialises with all
        # of its fields, not just those of the Contract base.
        model = cast("type[Envelope[DataT]]", Envelope[type(data)])  # type: ignore[misc]
        return model(
            source=source,
            type=data.ce_type(),
            dataschema=data.schema_uri(),
            data=data,
            **attributes,
        )


def decode(raw: bytes | str, model: type[DataT]) -> Envelope[DataT]:
    """Parse one structured-mode CloudEvent whose data is ``model``.

    Raises ``pydantic.ValidationError`` naming the failing field path, including
    when ``type`` names another event type or version than ``model``.
    """
    return Envelope[model].model_validate_json(raw)  # type: ignore[valid-type]
