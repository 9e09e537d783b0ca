"""The AsyncAPI 3.0 description of jobwire's subjects, built from the models.

Operations are seen from jobwire's side: ``send`` is what jobwire publishes
for others to consume, ``receive`` is what it consumes (and so what an
external worker or tool may publish to it).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic.json_schema import models_json_schema

from jobwire.contracts.deadletter import DeadLetter
from jobwire.contracts.envelope import CONTENT_TYPE, Contract, Envelope, Versioned
from jobwire.contracts.hosts import HostInfo
from jobwire.contracts.job_types import job_types
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.listeners import ListenerDefinition, ListenerSlotStatus
from jobwire.contracts.mail import MAIL_EVENT_MODELS, MailEvent, SendEmail
from jobwire.contracts.objects import EmailObject, FileObject
from jobwire.contracts.runs import RUN_EVENT_MODELS
from jobwire.contracts.subjects import DEFAULT_NAMESPACE, RunEvent
from jobwire.contracts.workflows import StartWorkflow

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENVELOPE_SCHEMA_ID = "urn:jobwire:schema:Envelope:v1"

OBJECT_MODELS: tuple[type[Versioned], ...] = (
    FileObject,
    EmailObject,
    HostInfo,
    ListenerDefinition,
    ListenerSlotStatus,
)
"""Models published for reference although no subject carries them directly
(objects inside StartWorkflow input; host registry and listener entries in NATS KV)."""

_REFS = "#/components/schemas/{model}"


@dataclass(frozen=True, slots=True)
class Channel:
    """One subject pattern and the message it carries."""

    address: str
    parameters: Mapping[str, str]
    model: type[Contract]
    sent_by: str | None = None
    received_by: str | None = None

    @property
    def key(self) -> str:
        name = self.model.__name__
        return name[0].lower() + name[1:]


_NS = DEFAULT_NAMESPACE
_RUN_ID = {"runId": "Id of the run, as in its JobDue."}

CHANNELS: tuple[Channel, ...] = (
    Channel(
        address=f"{_NS}.jobs.due.{{jobType}}",
        parameters={"jobType": "Job type, e.g. `start-workflow`."},
        model=JobDue,
        sent_by="The scheduler publishes one JobDue per run attempt.",
        received_by="The workers of a job type share one durable consumer on its subject; "
        "an external worker can serve its own job type the same way.",
    ),
    Channel(
        address=f"{_NS}.workflows.start.{{workflow}}",
        parameters={"workflow": "Name of the workflow to start."},
        model=StartWorkflow,
        sent_by="Start-workflow jobs and listeners publish one StartWorkflow per trigger, "
        "for the workflow engine or any external app to consume.",
    ),
    Channel(
        address=f"{_NS}.runs.{{runId}}.{RunEvent.STARTED}",
        parameters=_RUN_ID,
        model=RUN_EVENT_MODELS[RunEvent.STARTED],
        sent_by="A worker publishes it when it begins an attempt.",
        received_by="The scheduler records it in the run history.",
    ),
    Channel(
        address=f"{_NS}.runs.{{runId}}.{RunEvent.PROGRESS}",
        parameters=_RUN_ID,
        model=RUN_EVENT_MODELS[RunEvent.PROGRESS],
        sent_by="A worker publishes it during a long attempt.",
        received_by="The scheduler keeps the latest as the run's progress and heartbeat.",
    ),
    Channel(
        address=f"{_NS}.runs.{{runId}}.{RunEvent.FINISHED}",
        parameters=_RUN_ID,
        model=RUN_EVENT_MODELS[RunEvent.FINISHED],
        sent_by="A worker publishes it when an attempt ends.",
        received_by="The scheduler records the outcome and the job's new state, and "
        "schedules a retry if attempts are left.",
    ),
    Channel(
        address=f"{_NS}.runs.{{runId}}.{RunEvent.SKIPPED}",
        parameters=_RUN_ID,
        model=RUN_EVENT_MODELS[RunEvent.SKIPPED],
        sent_by="The scheduler publishes it for a due slot it does not run.",
    ),
    Channel(
        address=f"{_NS}.runs.{{runId}}.{RunEvent.CANCEL_REQUESTED}",
        parameters=_RUN_ID,
        model=RUN_EVENT_MODELS[RunEvent.CANCEL_REQUESTED],
        sent_by="The admin API publishes it when an operator cancels a run.",
        received_by="The worker running the attempt stops it.",
    ),
    Channel(
        address=f"{_NS}.mail.send.{{account}}",
        parameters={"account": "The mailer account to send with, e.g. `default`."},
        model=SendEmail,
        received_by="The mailer takes each into its queue (once per idempotency key) "
        "and sends it when an `email-send` job runs.",
    ),
    *(
        Channel(
            address=f"{_NS}.mail.events.{{emailId}}.{event}",
            parameters={"emailId": "Id of the email: uuid5 of its idempotency key."},
            model=MAIL_EVENT_MODELS[event],
            sent_by="The mailer publishes it once per email"
            + (" and attempt." if event == MailEvent.DEFERRED else "."),
        )
        for event in MailEvent
    ),
    Channel(
        address=f"{_NS}.dlq.{{source}}",
        parameters={"source": "The service or consumer that gave up, e.g. `archiver`."},
        model=DeadLetter,
        sent_by="Any jobwire consumer publishes it for a message it gives up on.",
    ),
)

_INFO_DESCRIPTION = f"""\
Subjects and messages of jobwire, an event-driven job execution service on NATS JetStream.

Every message is a CloudEvents 1.0 event in structured mode: the NATS payload is \
one JSON object (`{CONTENT_TYPE}`) with the context attributes and `data`. The \
`type` attribute names the message and its major version (e.g. \
`io.jobwire.job.due.v1`); readers should ignore fields they do not know.

Subjects start with the installation's namespace, `{DEFAULT_NAMESPACE}` by default. \
Operations are described from jobwire's side: `send` is what jobwire publishes, \
`receive` what it consumes."""

_NATS_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "NATS message headers jobwire sets.",
    "properties": {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "JetStream de-duplication key: the run id for JobDue, the "
            "idempotency key for StartWorkflow, the event id otherwise.",
        },
        "traceparent": {"type": "string", "description": "W3C trace context."},
        "tracestate": {"type": "string", "description": "W3C trace context."},
    },
}


def envelope_schema() -> dict[str, Any]:
    """JSON Schema of the envelope, with ``data`` left open to any message."""
    schema = Envelope.model_json_schema()
    # The unparameterised envelope types `data` as the abstract Contract base,
    # which says nothing to a reader: describe it as an object instead.
    schema.pop("$defs", None)
    data = schema["properties"]["data"]
    data.pop("$ref", None)
    data["type"] = "object"
    return schema


def component_models() -> list[type[Versioned]]:
    """Every model described under ``components.schemas``, in a stable order."""
    return [
        *(channel.model for channel in CHANNELS),
        *OBJECT_MODELS,
        *job_types().values(),
    ]


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document as a JSON-ready dict."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in CHANNELS:
        name = channel.model.__name__
        messages[name] = _message(channel.model)
        channels[channel.key] = {
            "address": channel.address,
            "title": name,
            "parameters": {
                param: _parameter(param, description)
                for param, description in channel.parameters.items()
            },
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        for action, summary in (("send", channel.sent_by), ("receive", channel.received_by)):
            if summary is not None:
                operations[f"{action}{name}"] = {
                    "action": action,
                    "summary": summary,
                    "channel": {"$ref": f"#/channels/{channel.key}"},
                    "messages": [{"$ref": f"#/channels/{channel.key}/messages/{name}"}],
                }

    _, definitions = models_json_schema(
        [(model, "validation") for model in component_models()], ref_template=_REFS
    )
    schemas = {**definitions["$defs"], "Envelope": envelope_schema(), "NatsHeaders": _NATS_HEADERS}
    return {
        "asyncapi": "3.0.0",
        "id": "urn:jobwire:asyncapi",
        "info": {
            "title": "jobwire",
            "version": "1.0.0",
            "description": _INFO_DESCRIPTION,
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def _message(model: type[Contract]) -> dict[str, Any]:
    summary, _, description = inspect.cleandoc(model.__doc__ or "").partition("\n\n")
    return {
        "name": model.__name__,
        "title": model.__name__,
        "summary": summary,
        "description": description,
        "contentType": CONTENT_TYPE,
        "headers": {"$ref": "#/components/schemas/NatsHeaders"},
        "payload": {
            "allOf": [
                {"$ref": "#/components/schemas/Envelope"},
                {
                    "type": "object",
                    "required": ["type", "data"],
                    "properties": {
                        "type": {"const": model.ce_type()},
                        "data": {"$ref": _REFS.format(model=model.__name__)},
                    },
                },
            ]
        },
    }


def _parameter(name: str, description: str) -> dict[str, Any]:
    parameter: dict[str, Any] = {"description": description}
    if name == "jobType":
        parameter["examples"] = list(job_types())
    return parameter
