"""Trigger → StartWorkflow, or the reason it cannot be one. No I/O.

This is the one place that decides what a workflow receives from a listener,
whatever the source: a message body as the job's ``input`` settings say, or a
file/email object as is.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from jobwire.contracts.listeners import ListenerDefinition, ListenerParams, MessageInput
from jobwire.contracts.workflows import Origin, StartWorkflow
from jobwire.listeners.domain.triggers import Trigger


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


def start_workflow(
    trigger: Trigger, definition: ListenerDefinition, params: ListenerParams
) -> StartWorkflow | Poison:
    if trigger.poison is not None:
        return Poison(*trigger.poison)
    size = len(trigger.body if trigger.body is not None else trigger.raw or b"")
    if size > params.max_message_bytes:
        return Poison("too_large", f"{size} bytes; the job allows {params.max_message_bytes}")
    correlation_id: str | None = None
    if trigger.obj is not None:
        value: Any = trigger.obj.model_dump(mode="json")
    elif trigger.body is not None:
        settings: MessageInput = getattr(params, "input", MessageInput())
        try:
            body = _body(trigger.body, settings.body)
        except ValueError as exc:
            return Poison("undecodable", str(exc))
        value = _input(trigger, body, settings)
        correlation_id = _correlation_id(trigger, body, settings.correlation_id)
    else:
        return Poison("mapping_failed", "the trigger has neither a body nor an object")
    key = message_id(definition, trigger)
    try:
        return StartWorkflow(
            workflow=params.workflow,
            input=value,
            idempotency_key=key,
            origin=Origin(
                kind="listener",
                job_id=definition.job_id,
                job_name=definition.job_name,
                coordinates=trigger.coordinates,
            ),
            correlation_id=correlation_id,
        )
    except ValidationError as exc:
        return Poison("mapping_failed", str(exc.errors()[0]["msg"]))


def _body(raw: bytes, mode: str) -> Any:
    if mode == "base64":
        return base64.b64encode(raw).decode("ascii")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8 text (byte {exc.start})") from None
    if mode == "text":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the body is not JSON: {exc.msg} at line {exc.lineno}") from None


def _input(trigger: Trigger, body: Any, settings: MessageInput) -> Any:
    if not settings.wrap:
        return body
    key = None
    if trigger.message_key is not None:
        key = trigger.message_key.decode("utf-8", errors="backslashreplace")
    return {"body": body, "key": key, "headers": trigger.headers, "source": trigger.coordinates}


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
