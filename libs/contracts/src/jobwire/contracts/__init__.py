"""jobwire message contracts: what services and external apps exchange.

Events and commands travel in a CloudEvents envelope on subjects named by
:class:`Subjects`; job parameters are validated by :func:`validate_params`.
The published JSON Schemas and AsyncAPI document are generated from these
models by ``python -m jobwire.contracts.export``.
"""

from jobwire.contracts.deadletter import DeadLetter
from jobwire.contracts.envelope import (
    CONTENT_TYPE,
    Contract,
    Envelope,
    Versioned,
    decode,
)
from jobwire.contracts.errors import ContractError
from jobwire.contracts.hosts import HostInfo
from jobwire.contracts.job_types import (
    JobParams,
    StartWorkflowParams,
    job_params,
    job_types,
    params_model,
    validate_params,
)
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.listeners import (
    EmailListenerParams,
    FileListenerParams,
    KafkaSubscriberParams,
    ListenerDefinition,
    ListenerParams,
    ListenerSlotStatus,
    MessageBusListenerParams,
    MessageInput,
    ServiceBusListenerParams,
)
from jobwire.contracts.mail import (
    MAIL_EVENT_MODELS,
    AddressBookPopulateParams,
    Attachment,
    EmailDeferred,
    EmailFailed,
    EmailQueued,
    EmailSendParams,
    EmailSent,
    MailEvent,
    RecipientResult,
    SendEmail,
    email_id,
)
from jobwire.contracts.objects import EmailAddress, EmailObject, FileObject, StorageKind
from jobwire.contracts.runs import (
    RUN_EVENT_MODELS,
    RunCancelRequested,
    RunError,
    RunFinished,
    RunProgress,
    RunSkipped,
    RunStarted,
    RunStatus,
    SkipReason,
)
from jobwire.contracts.search import SearchFullLoadParams, SearchIncrementalParams
from jobwire.contracts.subjects import (
    DEFAULT_NAMESPACE,
    DeadLetterSource,
    JobTypeName,
    RunEvent,
    RunId,
    Stream,
    Subjects,
    WorkflowName,
    token,
)
from jobwire.contracts.workflows import Origin, OriginKind, StartWorkflow

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_NAMESPACE",
    "MAIL_EVENT_MODELS",
    "RUN_EVENT_MODELS",
    "AddressBookPopulateParams",
    "Attachment",
    "Contract",
    "ContractError",
    "DeadLetter",
    "DeadLetterSource",
    "EmailAddress",
    "EmailDeferred",
    "EmailFailed",
    "EmailListenerParams",
    "EmailObject",
    "EmailQueued",
    "EmailSendParams",
    "EmailSent",
    "Envelope",
    "FileListenerParams",
    "FileObject",
    "HostInfo",
    "JobDue",
    "JobParams",
    "JobTypeName",
    "KafkaSubscriberParams",
    "ListenerDefinition",
    "ListenerParams",
    "ListenerSlotStatus",
    "MailEvent",
    "MessageBusListenerParams",
    "MessageInput",
    "Origin",
    "OriginKind",
    "RecipientResult",
    "RunCancelRequested",
    "RunError",
    "RunEvent",
    "RunFinished",
    "RunId",
    "RunProgress",
    "RunSkipped",
    "RunStarted",
    "RunStatus",
    "SearchFullLoadParams",
    "SearchIncrementalParams",
    "SendEmail",
    "ServiceBusListenerParams",
    "SkipReason",
    "StartWorkflow",
    "StartWorkflowParams",
    "StorageKind",
    "Stream",
    "Subjects",
    "Versioned",
    "WorkflowName",
    "decode",
    "email_id",
    "job_params",
    "job_types",
    "params_model",
    "token",
    "validate_params",
]
