"""Trigger → StartWorkflow, or the reason it cannot be one. No I/O.

This is the one place that decides what a workflow receives from a listener,
whatever the source: a message body as the job's ``input`` settings say, or a
file/email object as is.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pydantic_core

from jobwire.contracts.listeners import ListenerDefinition, ListenerParams, MessageInput
from jobwire.listeners.domain.triggers import Trigger

_WRAPPED_JSON = MessageInput()


@dataclass(frozen=True, slots=True)
class Poison:
    """Why a trigger goes to the dead-letter stream instead of a workflow."""

    reason: str  # machine-readable: undecodable, too_large, mapping_failed, or the source's
    detail: str


def message_id(definition: ListenerDefinition, trigger: Trigger) -> str:
    """The idempotency key and ``Nats-Msg-Id`` of a trigger's StartWorkflow.

    Scoped by job so that two listeners on one topic each start their workflow;
    not by job version, so that an edit does not re-fire what was handled.
    """
    return f"listener:{definition.job_id}:{trigger.key}"


class StartWorkflowWriter:
    """Writes the StartWorkflow (its JSON) for each trigger of one listener.

    The JSON is written directly, as ``Broker.encode`` writes the envelope,
    instead of building and serialising pydantic models: this runs once per
    message on a listener's hot path, and a JSON body is embedded as received
    (after checking that it is JSON) rather than parsed and written again.
    Tests hold the output to the StartWorkflow contract by validating it.
    """

    def __init__(self, definition: ListenerDefinition, params: ListenerParams) -> None:
        self.definition = definition
        self.params = params
        self.input: MessageInput = getattr(params, "input", None) or _WRAPPED_JSON
        # What is the same for every trigger of this listener, written once.
        self._head = b'{"workflow":' + _dumps(params.workflow) + b',"input":'
        self._origin = (
            b',"origin":{"kind":"listener","job_id":'
            + _dumps(definition.job_id)
            + b',"job_name":'
            + _dumps(definition.job_name)
            + b',"run_id":null,"coordinates":'
        )

    def write(self, trigger: Trigger) -> tuple[str, bytes] | Poison:
        """(idempotency key, StartWorkflow JSON), or why the trigger is poison."""
        if trigger.poison is not None:
            return Poison(*trigger.poison)
        size = len(trigger.body if trigger.body is not None else trigger.raw or b"")
        limit = self.params.max_message_bytes
        if size > limit:
            return Poison("too_large", f"{size} bytes; the job allows {limit}")
        correlation_id: str | None = None
        coordinates = _dumps(trigger.coordinates)
        if trigger.obj is not None:
            value = trigger.obj.__pydantic_serializer__.to_json(trigger.obj)
        elif trigger.body is not None:
            try:
                body_json, parsed = _body(trigger.body, self.input.body)
            except ValueError as exc:
                return Poison("undecodable", str(exc))
            value = self._input(trigger, body_json, coordinates)
            correlation_id = _correlation_id(trigger, parsed, self.input.correlation_id)
        else:
            return Poison("mapping_failed", "the trigger has neither a body nor an object")
        key = message_id(self.definition, trigger)
        data = b"".join(
            [
                self._head,
                value,
                b',"idempotency_key":',
                _dumps(key),
                self._origin,
                coordinates,
                b'},"correlation_id":',
                _dumps(correlation_id),
                b"}",
            ]
        )
        return key, data

    def _input(self, trigger: Trigger, body_json: bytes, coordinates: bytes) -> bytes:
        if not self.input.wrap:
            return body_json
        key = None
        if trigger.message_key is not None:
            key = trigger.message_key.decode("utf-8", errors="backslashreplace")
        return b"".join(
            [
                b'{"body":',
                body_json,
                b',"key":',
                _dumps(key),
                b',"headers":',
                _dumps(trigger.headers),
                b',"source":',
                coordinates,
                b"}",
            ]
        )


# pydantic-core's JSON (Rust) writes and reads the few small values of a
# trigger several times faster than the json module.
_dumps = pydantic_core.to_json


def _body(raw: bytes, mode: str) -> tuple[bytes, Any]:
    """The body as JSON to embed, and its parsed value (for a correlation id)."""
    if mode == "base64":
        return b'"' + base64.b64encode(raw) + b'"', None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8 text (byte {exc.start})") from None
    if mode == "text":
        return _dumps(text), text
    if text.startswith("\ufeff"):  # a byte order mark: JSON text must not begin with one
        raise ValueError("the body is not JSON: it starts with a byte order mark")
    try:
        # NaN and Infinity are not JSON: embedded as they are, they would make
        # the whole message unreadable to strict parsers.
        parsed = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    # Valid UTF-8 JSON: embedded byte for byte rather than written again.
    return raw, parsed


def _correlation_id(trigger: Trigger, body: Any, source: str | None) -> str | None:
    """The correlation id the job's settings point at; None when the message lacks it
    (a missing correlation id is not a reason to drop a workflow start)."""
    if source is None:
        return None
    if source == "key":
        if trigger.message_key is None:
            return None
        return trigger.message_key.decode("utf-8", errors="backslashreplace") or None
    kind, _, where = source.partition(":")
    if kind == "header":
        return trigger.headers.get(where) or None
    found = _pointer(body, where)
    if found is None or isinstance(found, dict | list):
        return None
    return str(found).lower() if isinstance(found, bool) else str(found)


def _pointer(document: Any, pointer: str) -> Any:
    """RFC 6901 JSON pointer lookup; None where the path does not exist."""
    if pointer == "":
        return document
    current = document
    for raw in pointer.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current
