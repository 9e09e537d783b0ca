"""What-ifs for the Kafka side: how much of the gap to the bare loop is the
per-record mapping and encoding, measured rather than guessed.

Both are SlotRunner subclasses that override only ``_encode`` (the mapping of
one trigger to subject, payload and headers); receive, publish, wait for acks,
ack and commit are the shipped code. Neither ships.

- ``raw``: no mapping and no envelope — the record's bytes with the
  ``Nats-Msg-Id`` header, as the bare loop sends them: what the runner,
  KafkaSource and Broker.publish_encoded cost on their own.
- ``hand_encoded``: the body checked with ``json.loads`` as today (a body that
  is not JSON still goes the shipped way), then the StartWorkflow written as
  bytes around the original body — as ``Broker.encode`` already writes the
  envelope — instead of building Origin and StartWorkflow models and
  serialising them. The first payload is checked equal (as JSON) to what the
  shipped code produces, so the what-if sends the same StartWorkflow.
"""

from __future__ import annotations

import json

from jobwire.contracts.workflows import StartWorkflow
from jobwire.listeners.domain.mapping import message_id
from jobwire.listeners.domain.triggers import Trigger
from jobwire.listeners.runner import SlotRunner
from jobwire.runtime.broker import MSG_ID_HEADER, Encoded, PublishContext


def _json(value: object) -> bytes:
    # json.dumps with its default arguments takes the C encoder's fast path;
    # any argument builds a new encoder per call (~2 µs).
    return json.dumps(value).encode()


class RawRunner(SlotRunner):
    async def _encode(self, trigger: Trigger, context: PublishContext) -> Encoded:
        subject = self.broker.subjects.workflow_start(self.params.workflow)
        return Encoded(
            subject, trigger.body or b"", {MSG_ID_HEADER: message_id(self.definition, trigger)}
        )


class HandEncodedRunner(SlotRunner):
    _checked = False
    # What is the same for every trigger of this listener, written once.
    _constant: tuple[bytes, bytes, str] | None = None

    def _constants(self) -> tuple[bytes, bytes, str]:
        if self._constant is None:
            definition = self.definition
            workflow = b'{"workflow":' + _json(self.params.workflow) + b',"input":'
            origin = (
                b',"origin":{"kind":"listener","job_id":'
                + _json(definition.job_id)
                + b',"job_name":'
                + _json(definition.job_name)
                + b',"run_id":null,"coordinates":'
            )
            subject = self.broker.subjects.workflow_start(self.params.workflow)
            self._constant = (workflow, origin, subject)
        return self._constant

    async def _encode(self, trigger: Trigger, context: PublishContext) -> Encoded:
        settings = getattr(self.params, "input", None)
        body = trigger.body
        if (
            settings is None
            or settings.body != "json"
            or settings.correlation_id is not None
            or body is None
            or trigger.poison is not None
            or len(body) > self.params.max_message_bytes
        ):
            return await super()._encode(trigger, context)
        try:
            json.loads(body)
        except ValueError:
            return await super()._encode(trigger, context)
        workflow, origin, subject = self._constants()
        key = message_id(self.definition, trigger)
        key_json = _json(key)
        coordinates = _json(trigger.coordinates)
        if settings.wrap:
            message_key = trigger.message_key
            text_key = (
                None if message_key is None else message_key.decode("utf-8", "backslashreplace")
            )
            headers = _json(trigger.headers) if trigger.headers else b"{}"
            value = b"".join(
                [
                    b'{"body":',
                    body,
                    b',"key":',
                    _json(text_key) if text_key is not None else b"null",
                    b',"headers":',
                    headers,
                    b',"source":',
                    coordinates,
                    b"}",
                ]
            )
        else:
            value = body
        payload = b"".join(
            [
                b'{"specversion":"1.0","id":',
                key_json,
                self.broker._source_json,
                _type_attributes(),
                context.attributes,
                b',"data":',
                workflow,
                value,
                b',"idempotency_key":',
                key_json,
                origin,
                coordinates,
                b'},"correlation_id":null}}',
            ]
        )
        if not self._checked:
            shipped = await super()._encode(trigger, context)
            if json.loads(shipped.payload) != json.loads(payload):
                raise AssertionError(
                    f"hand-encoded payload differs:\n{shipped.payload!r}\n{payload!r}"
                )
            self._checked = True
        return Encoded(subject, payload, {MSG_ID_HEADER: key, **context.headers})


def _type_attributes() -> bytes:
    from jobwire.runtime.broker import _type_attributes as shipped

    return shipped(StartWorkflow)


WHAT_IF_ABOUT = {
    "raw": "runner + KafkaSource + Broker.publish_encoded with the record's bytes as they "
    "are (no mapping, no envelope): the floor of the shipped pipeline",
    "hand_encoded": "json.loads of the body as today, then the same StartWorkflow written as "
    "bytes around the original body instead of pydantic models + to_json (not shipped)",
}
WHAT_IFS: dict[str, type[SlotRunner]] = {"raw": RawRunner, "hand_encoded": HandEncodedRunner}
