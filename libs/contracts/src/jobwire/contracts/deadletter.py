"""The record of a message jobwire gave up on."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Self

from pydantic import (
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from jobwire.contracts.envelope import Contract
from jobwire.contracts.subjects import DeadLetterSource


def _decode_base64_json(value: Any, info: ValidationInfo) -> Any:
    # Only JSON carries base64: in Python the payload is the raw bytes already,
    # and decoding those too would silently mangle any payload that happens to
    # look like base64.
    if info.mode != "json":
        return value
    if not isinstance(value, str):
        raise ValueError("payload must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"payload is not valid base64: {exc}") from exc


def _encode_base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# Standard (RFC 4648 section 4, not URL-safe) alphabet with padding: what
# CloudEvents' `data_base64` and most languages' default decoder use.
Base64Payload = Annotated[
    bytes,
    BeforeValidator(_decode_base64_json),
    PlainSerializer(_encode_base64, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


class DeadLetter(Contract):
    """A message that could not be handled, set aside for an operator.

    Sent on ``jobwire.dlq.{source}`` when a consumer gives up on a message: it
    cannot be decoded, or handling it kept failing until its attempts ran out.
    Holds the original payload byte for byte and its headers, so the message
    can be inspected and re-published unchanged.
    """

    event_type = "io.jobwire.deadletter"

    source: DeadLetterSource = Field(
        description="The service or consumer that gave up, e.g. `archiver`; also the "
        "last token of the subject."
    )
    subject: str = Field(
        min_length=1,
        description="Subject the message was received on; for something that was not a "
        "message, where it was going (e.g. `search/<index>/<document id>`).",
    )
    reason: str = Field(
        min_length=1,
        description="Short machine-readable code, e.g. `undecodable` or `max_attempts`.",
    )
    detail: str = Field(default="", description="Human-readable explanation of the failure.")
    payload: Base64Payload = Field(
        description="The original message payload, base64-encoded (standard alphabet)."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="The original message headers."
    )
    first_failed_at: AwareDatetime = Field(description="When handling first failed.")
    last_failed_at: AwareDatetime = Field(description="When handling failed the last time.")
    attempts: int = Field(ge=1, description="How many times handling was tried.")

    @model_validator(mode="after")
    def _failures_in_order(self) -> Self:
        if self.last_failed_at < self.first_failed_at:
            raise ValueError("last_failed_at is earlier than first_failed_at")
        return self
