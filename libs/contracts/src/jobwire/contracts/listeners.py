"""Listener jobs: their parameters, and how listener definitions reach the listeners.

A listener job is a job definition like any other (stored by the scheduler,
edited through the admin API), of one of the types below, without a schedule:
it runs as long as it is enabled and turns every arriving message, file or email
into one StartWorkflow. The scheduler mirrors each enabled listener into the
NATS KV bucket ``<namespace>_listeners`` as a :class:`ListenerDefinition`; the
listeners service watches that bucket and never reads the scheduler's database.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal, Self

from pydantic import AwareDatetime, ConfigDict, Field, field_validator, model_validator

from jobwire.contracts.envelope import Versioned
from jobwire.contracts.job_types import JobParams, job_params
from jobwire.contracts.secrets import SecretName
from jobwire.contracts.storage import StorageConfig
from jobwire.contracts.subjects import Bucket, WorkflowName, bucket_name

MIB = 1024 * 1024


class MessageInput(Versioned):
    """How a message becomes the workflow's ``input``."""

    model_config = ConfigDict(extra="forbid")

    body: Literal["json", "text", "base64"] = Field(
        default="json",
        description="json: the body parsed as JSON (a body that is not JSON is dead-lettered); "
        "text: the body as a UTF-8 string; base64: the raw bytes, base64-encoded.",
    )
    wrap: bool = Field(
        default=True,
        description='true: input = {"body": ..., "key": ..., "headers": {...}, "source": '
        "{...}}, source being the coordinates; false: input = the body alone.",
    )
    correlation_id: str | None = Field(
        default=None,
        description="Where the StartWorkflow's correlation id comes from: `key` (the "
        "message key), `header:<name>`, or `body:<JSON pointer>` such as `body:/order/id`.",
    )

    @field_validator("correlation_id")
    @classmethod
    def _correlation_source(cls, value: str | None) -> str | None:
        if value is None or value == "key" or re.fullmatch(r"header:.+|body:(/.*)?", value):
            return value
        raise ValueError("use `key`, `header:<name>` or `body:<JSON pointer>`")


class ListenerParams(JobParams):
    """What every listener job has: the workflow it starts, and a size limit."""

    # Whether replicas > 1 means N active consumers sharing the load (the
    # source spreads the work: Kafka partitions, Service Bus competing
    # consumers). Other sources would fire every trigger N times.
    scalable: ClassVar[bool] = False

    workflow: WorkflowName = Field(description="Workflow started for each trigger.")
    max_message_bytes: int = Field(
        default=MIB,
        ge=1,
        le=64 * MIB,
        description="A larger message or email is dead-lettered (files are passed by "
        "reference and not limited).",
    )


class _MessageListenerParams(ListenerParams):
    input: MessageInput = Field(default_factory=MessageInput)
    batch_max_messages: int = Field(
        default=500, ge=1, le=10_000, description="Messages handled (and acked) together."
    )


@job_params("kafka-subscriber")
class KafkaSubscriberParams(_MessageListenerParams):
    """Start a workflow for every record of Kafka topics.

    Offsets are committed only after JetStream stored the StartWorkflow of
    every record before them; a record is identified by topic/partition/offset.
    """

    scalable: ClassVar[bool] = True

    bootstrap_servers: list[str] = Field(min_length=1, description="`host:port` of brokers.")
    topics: list[str] = Field(default_factory=list, description="Topics to read.")
    topic_pattern: str | None = Field(
        default=None, description="Regular expression of topics to read, instead of `topics`."
    )
    group_id: str | None = Field(
        default=None, description="Consumer group; empty = `jobwire-<job id>`."
    )
    start_from: Literal["earliest", "latest"] = Field(
        default="latest", description="Where a group without committed offsets starts."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: SecretName | None = None
    sasl_password: SecretName | None = None
    ssl_ca: SecretName | None = Field(
        default=None, description="Secret holding the CA certificate(s), PEM."
    )
    batch_max_wait_ms: int = Field(
        default=200, ge=1, le=60_000, description="Longest wait to fill a batch."
    )
    session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        le=300_000,
        description="Group session timeout: how soon the group notices a dead consumer.",
    )
    heartbeat_interval_ms: int = Field(
        default=3000, ge=100, le=60_000, description="Heartbeat to the group coordinator."
    )

    @model_validator(mode="after")
    def _one_subscription(self) -> Self:
        if bool(self.topics) == bool(self.topic_pattern):
            raise ValueError("set either topics or topic_pattern")
        if self.topic_pattern is not None:
            try:
                re.compile(self.topic_pattern)
            except re.error as exc:
                raise ValueError(f"topic_pattern is not a regular expression: {exc}") from None
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be shorter than session_timeout_ms")
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "SASL needs sasl_mechanism, sasl_username and sasl_password (secret names)"
            )
        return self


@job_params("message-bus-listener")
class MessageBusListenerParams(_MessageListenerParams):
    """Start a workflow for every message on a NATS subject.

    ``core``: plain subscription (optionally in a queue group); core NATS has
    no acknowledgement, so a message arriving while the listener is down is
    not seen. ``jetstream``: a durable consumer on a stream; each message is
    acked after its StartWorkflow is stored and identified by stream sequence.
    """

    mode: Literal["core", "jetstream"] = "jetstream"
    subject: str = Field(min_length=1, description="Subject (wildcards allowed) to listen on.")
    queue_group: str | None = Field(default=None, description="core: queue group to join.")
    stream: str | None = Field(default=None, description="jetstream: the stream to read.")
    durable: str | None = Field(
        default=None, description="jetstream: durable consumer name; empty = `jobwire-<job id>`."
    )
    deliver: Literal["all", "new"] = Field(
        default="new", description="jetstream: where a new durable consumer starts."
    )
    servers: list[str] = Field(
        default_factory=list,
        description="NATS servers to listen on; empty = the NATS jobwire itself uses.",
    )
    credentials: SecretName | None = Field(
        default=None, description="Secret holding a NATS .creds file for `servers`."
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> Self:
        if self.mode == "jetstream" and not self.stream:
            raise ValueError("stream is required when mode is jetstream")
        if self.mode == "core" and (self.stream or self.durable):
            raise ValueError("stream and durable apply to mode jetstream only")
        if self.mode == "jetstream" and self.queue_group:
            raise ValueError("queue_group applies to mode core only")
        return self


@job_params("file-listener")
class FileListenerParams(ListenerParams):
    """Start a workflow for every new file in a folder, bucket or container.

    The workflow gets a FileObject (a reference; the content stays in the
    storage). After JetStream stored the StartWorkflow the file is moved under
    ``processed_prefix`` (or deleted, or kept: a checkpoint remembers it).
    """

    storage: StorageConfig = Field(description="Where to look.")
    pattern: str = Field(
        default="*", description="Glob on the path below the storage prefix, e.g. `*.pdf`."
    )
    stable_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="A file counts as complete when its size and etag stayed the same this "
        "long (0 for object stores, where an object appears only when complete).",
    )
    poll_seconds: float = Field(default=5.0, gt=0, le=3600, description="Time between scans.")
    after: Literal["move", "delete", "keep"] = Field(
        default="move", description="What happens to a file once its workflow start is stored."
    )
    processed_prefix: str = Field(
        default="processed/",
        min_length=1,
        description="after=move: files go below this folder (inside the storage prefix), "
        "which is never scanned.",
    )
    batch_max_files: int = Field(default=500, ge=1, le=10_000)


@job_params("servicebus-listener")
class ServiceBusListenerParams(_MessageListenerParams):
    """Start a workflow for every message of an Azure Service Bus queue or subscription.

    Peek-lock: a message is completed only after JetStream stored its
    StartWorkflow, abandoned when that cannot be done now, and dead-lettered
    (with reason and description) when it can never be. Identified by its
    message id (or sequence number when it has none).
    """

    scalable: ClassVar[bool] = True

    connection_string: SecretName | None = Field(
        default=None, description="Secret holding the namespace's connection string."
    )
    fully_qualified_namespace: str | None = Field(
        default=None,
        description="`<name>.servicebus.windows.net`, with `sas_key_name` and `sas_key`, "
        "instead of a connection string.",
    )
    sas_key_name: str | None = Field(default=None, description="Shared access policy name.")
    sas_key: SecretName | None = Field(
        default=None, description="Secret holding the shared access policy's key."
    )
    queue: str | None = Field(default=None, description="Queue to receive from.")
    topic: str | None = Field(default=None, description="Topic, with `subscription`.")
    subscription: str | None = Field(default=None, description="Subscription of `topic`.")
    prefetch: int = Field(
        default=0, ge=0, le=10_000, description="Messages the client fetches ahead (locked)."
    )
    max_lock_renewal_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Locks of received messages are renewed while handled, up to this long.",
    )
    max_wait_seconds: float = Field(
        default=1.0, gt=0, le=60, description="Longest wait of one receive."
    )

    @model_validator(mode="after")
    def _entity_and_credentials(self) -> Self:
        if bool(self.queue) == bool(self.topic):
            raise ValueError("set either queue or topic (with subscription)")
        if bool(self.topic) != bool(self.subscription):
            raise ValueError("topic and subscription go together")
        by_key = (self.fully_qualified_namespace, self.sas_key_name, self.sas_key)
        if bool(self.connection_string) == any(by_key):
            raise ValueError(
                "set either connection_string or fully_qualified_namespace with "
                "sas_key_name and sas_key"
            )
        if any(by_key) and not all(by_key):
            raise ValueError("fully_qualified_namespace, sas_key_name and sas_key go together")
        return self


@job_params("email-listener")
class EmailListenerParams(ListenerParams):
    """Start a workflow for every new email in an IMAP folder.

    The workflow gets an EmailObject: headers, text and HTML bodies, and the
    attachments stored in ``attachments`` and referenced as files. A mailbox
    position (UIDVALIDITY + last UID) is checkpointed, so a restart neither
    fires an email again nor misses one; afterwards the email is flagged
    \\Seen and/or moved, as configured.
    """

    host: str = Field(min_length=1, description="IMAP server host.")
    port: int | None = Field(
        default=None, ge=1, le=65_535, description="Empty = 993 with TLS, 143 without."
    )
    tls: bool = Field(default=True, description="IMAPS (TLS from the first byte).")
    ca: SecretName | None = Field(
        default=None, description="Secret holding CA certificate(s), PEM, to trust."
    )
    username: SecretName = Field(description="Secret holding the user name.")
    password: SecretName = Field(description="Secret holding the password.")
    folder: str = Field(default="INBOX", min_length=1, description="Folder to watch.")
    idle: bool = Field(
        default=True, description="Wait with IMAP IDLE (push); polling is the fallback."
    )
    poll_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Time between checks without IDLE."
    )
    mark_seen: bool = Field(default=True, description="Flag handled emails \\Seen.")
    move_to: str | None = Field(
        default=None, description="Move handled emails to this folder (created if missing)."
    )
    attachments: StorageConfig | None = Field(
        default=None,
        description="Where attachments are stored; empty = attachments are not passed on.",
    )
    max_message_bytes: int = Field(
        default=25 * MIB,
        ge=1,
        le=64 * MIB,
        description="A larger email is dead-lettered (the raw message is kept with it).",
    )
    batch_max_messages: int = Field(default=50, ge=1, le=1000)


class ListenerDefinition(Versioned):
    """One enabled listener job, as the scheduler mirrors it into ``<ns>_listeners``.

    The key is the job id. A disabled, paused or deleted job has no entry: the
    listeners stop it. ``job_version`` changes with every edit, so a listener
    restarts with the new parameters.
    """

    job_id: str = Field(min_length=1)
    job_name: str = Field(min_length=1)
    job_type: str = Field(min_length=1, description="kafka-subscriber, file-listener, and so on")
    job_version: int = Field(ge=1)
    replicas: int = Field(ge=1, description="Slots to run: 1 = one active with failover.")
    params: dict[str, Any] = Field(description="The job's params, validated by its type.")

    @staticmethod
    def bucket(namespace: str) -> str:
        return bucket_name(namespace, Bucket.LISTENERS)


# Suspended: on standby — another instance holds the listener's only slot.
ListenerState = Literal["Suspended", "Starting", "Running", "RecyclePending", "Failed", "Stopping"]


class ListenerSlotStatus(Versioned):
    """What an instance says about each listener (host registry ``status["listeners"]``):
    one entry per slot it holds, or one Suspended entry for a listener it stands by for."""

    job_id: str
    job_name: str
    job_version: int
    slot: int | None = Field(ge=0, description="The slot held; null while Suspended.")
    state: ListenerState
    since: AwareDatetime = Field(description="When the slot entered this state.")
    received: int = Field(ge=0, description="Triggers taken from the source.")
    published: int = Field(ge=0, description="StartWorkflow commands stored by JetStream.")
    dead_lettered: int = Field(ge=0)
    errors: int = Field(ge=0, description="Failed attempts (connect, publish, ack).")
    last_error: str | None = None
    lag: int | None = Field(
        default=None, description="Messages waiting in the source, where it can tell."
    )
