"""Azure Service Bus source: every message of a queue or topic subscription is one trigger.

Peek-lock: a received message stays locked (its lock renewed by the SDK's
``AutoLockRenewer`` for up to ``max_lock_renewal_seconds``) until the runner
acks it, which completes it — only after JetStream stored its StartWorkflow.
A trigger the runner stored as a dead letter is dead-lettered in Service Bus
too (``<entity>/$DeadLetterQueue``, with reason and description), as Service
Bus applications expect. A batch the runner cannot publish before stopping is
abandoned, so another consumer gets it at once. A message whose lock was lost
(expired, or the connection dropped) comes again with its message id, the
idempotency key, and JetStream drops the duplicate StartWorkflow.

Replicas are competing consumers on the one entity: Service Bus spreads the
messages, nothing is assigned.

The SDK can wait silently for ever when the namespace drops a session during
authentication, so every call that talks to Service Bus is bounded here. And
azure-servicebus 7.15 gives two management requests racing on one session the
same delivery-id (it counts after an await), which an AMQP peer answers by
closing the connection: lock renewals and settlements of a receiver therefore
go one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from azure.core.credentials import AzureNamedKeyCredential
from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import AutoLockRenewer, ServiceBusClient, ServiceBusReceiver
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import MessageAlreadySettled, MessageLockLostError

from jobwire.contracts.listeners import ServiceBusListenerParams
from jobwire.listeners.sources import SourceContext, Trigger
from jobwire.runtime.logs import get_logger

__all__ = ["HEADER_PREFIX", "ServiceBusSource"]

log = get_logger("jobwire.listeners.servicebus")

# Below the runner's open timeout (30 s by default), so that this error, naming
# the entity and the namespace, is the one reported.
OPEN_TIMEOUT = 25.0
# A receive waits at most max_wait_seconds for messages; beyond that plus this
# margin (a reconnect inside the SDK) it is hung.
RECEIVE_MARGIN = 20.0
# One settlement: the SDK waits for Service Bus to echo the outcome, and may
# retry over the management link.
SETTLE_TIMEOUT = 20.0
CLOSE_TIMEOUT = 10.0
# One lock renewal; the AutoLockRenewer itself waits for ever.
RENEW_TIMEOUT = 10.0
# Service Bus caps the dead-letter reason and description (application properties).
_DEAD_LETTER_TEXT_MAX = 1024

# Message properties other than application properties, in `Trigger.headers`.
HEADER_PREFIX = "servicebus."

# The runner retries with its own backoff; the SDK's retries only smooth over blips.
_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 2,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 5,
}


class ServiceBusSource:
    """A peek-lock receiver; implements ``jobwire.listeners.sources.Source``.

    Triggers carry ``token = ServiceBusReceivedMessage``. ``ack`` completes each
    (or dead-letters it when the runner stored a dead letter for it); a lock
    lost meanwhile is logged, not raised: the message comes again and is
    de-duplicated downstream. Any other settlement failure raises, and the
    unsettled messages come again once their locks expire.
    """

    def __init__(
        self,
        params: ServiceBusListenerParams,
        ctx: SourceContext,
        *,
        open_timeout: float = OPEN_TIMEOUT,
        settle_timeout: float = SETTLE_TIMEOUT,
    ) -> None:
        self._params = params
        self._ctx = ctx
        self._open_timeout = open_timeout
        self._settle_timeout = settle_timeout
        if params.queue:
            self.entity = params.queue
        else:
            self.entity = f"{params.topic}/Subscriptions/{params.subscription}"
        self._log = log.bind(job_id=ctx.definition.job_id, slot=ctx.slot, entity=self.entity)
        self._client: ServiceBusClient | None = None
        self._receiver: ServiceBusReceiver | None = None
        self._renewer: AutoLockRenewer | None = None
        # One management request (renewal, settlement) at a time; see the module doc.
        self._one_at_a_time = asyncio.Lock()

    @property
    def namespace(self) -> str:
        """The namespace host, for errors and logs (never the credentials)."""
        client = self._client
        if client is not None:
            return str(client.fully_qualified_namespace)
        return self._params.fully_qualified_namespace or "(from the connection string)"

    async def open(self) -> None:
        params = self._params
        client = self._make_client()
        self._client = client
        self._renewer = AutoLockRenewer(
            max_lock_renewal_duration=params.max_lock_renewal_seconds,
            on_lock_renew_failure=self._renew_failed,
        )
        options: dict[str, Any] = {
            "receive_mode": ServiceBusReceiveMode.PEEK_LOCK,
            "prefetch_count": params.prefetch,
            "client_identifier": f"jobwire-{self._ctx.definition.job_id}-{self._ctx.slot}",
        }
        if params.queue:
            receiver = client.get_queue_receiver(params.queue, **options)
        else:
            topic, subscription = params.topic or "", params.subscription or ""
            receiver = client.get_subscription_receiver(topic, subscription, **options)
        self._receiver = receiver
        try:
            # Authenticates ($cbs) and attaches the link; see the module docstring.
            async with asyncio.timeout(self._open_timeout):
                await receiver.__aenter__()
        except TimeoutError:
            await self.close()
            raise TimeoutError(
                f"Service Bus receiver for {self.entity!r} not open within "
                f"{self._open_timeout:g} s (namespace {self.namespace})"
            ) from None
        except BaseException:
            await self.close()
            raise
        self._log.info("servicebus.opened", namespace=self.namespace, prefetch=params.prefetch)

    async def receive(self, max_items: int, timeout: float) -> Sequence[Trigger]:
        receiver = self._require_receiver()
        wait = min(timeout, self._params.max_wait_seconds)
        try:
            async with asyncio.timeout(wait + RECEIVE_MARGIN):
                messages = await receiver.receive_messages(
                    max_message_count=max_items, max_wait_time=wait
                )
        except TimeoutError:
            raise TimeoutError(
                f"Service Bus receive from {self.entity!r} hung for {wait + RECEIVE_MARGIN:g} s"
            ) from None
        if messages and self._renewer is not None:
            renewals = cast(ServiceBusReceiver, _OneAtATime(receiver, self._one_at_a_time))
            for message in messages:
                self._renewer.register(renewals, message)
        return [_trigger(self.entity, message) for message in messages]

    async def ack(self, triggers: Sequence[Trigger]) -> None:
        receiver = self._require_receiver()
        lost: list[str] = []
        for index, trigger in enumerate(triggers):
            message: ServiceBusReceivedMessage = trigger.token
            try:
                async with asyncio.timeout(self._settle_timeout), self._one_at_a_time:
                    if trigger.dead_letter is None:
                        await receiver.complete_message(message)
                    else:
                        reason, detail = trigger.dead_letter
                        await receiver.dead_letter_message(
                            message,
                            reason=reason[:_DEAD_LETTER_TEXT_MAX],
                            error_description=detail[:_DEAD_LETTER_TEXT_MAX],
                        )
            except (MessageLockLostError, MessageAlreadySettled):
                # Delivered again (or already) elsewhere; its StartWorkflow is stored
                # under its message id, so the redelivery is a harmless duplicate.
                lost.append(trigger.key)
            except Exception as error:
                self._log.warning(
                    "servicebus.settle_failed",
                    key=trigger.key,
                    unsettled=len(triggers) - index,
                    error=_describe(error),
                )
                raise
        if lost:
            self._log.warning("servicebus.locks_lost", keys=lost[:20], count=len(lost))

    async def release(self, triggers: Sequence[Trigger]) -> None:
        """Abandon each, so that the next receive (here or elsewhere) gets it at once.
        Best effort: a message not abandoned comes again when its lock expires."""
        receiver = self._receiver
        if receiver is None:
            return
        for index, trigger in enumerate(triggers):
            try:
                async with asyncio.timeout(self._settle_timeout), self._one_at_a_time:
                    await receiver.abandon_message(trigger.token)
            except (MessageLockLostError, MessageAlreadySettled):
                continue
            except Exception as error:
                self._log.warning(
                    "servicebus.release_failed",
                    key=trigger.key,
                    left_locked=len(triggers) - index,
                    error=_describe(error),
                )
                return

    async def close(self) -> None:
        receiver, renewer, client = self._receiver, self._renewer, self._client
        self._receiver = self._renewer = self._client = None
        # Receiver first: its renewals stop with it, and close() releases what it
        # prefetched but never handed out.
        for name, closeable in (("receiver", receiver), ("renewer", renewer), ("client", client)):
            if closeable is None:
                continue
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await closeable.close()
            except Exception as error:
                self._log.warning("servicebus.close_failed", part=name, error=_describe(error))

    def lag(self) -> int | None:
        """Unknown: the entity's message count needs the management API (Manage rights)."""
        return None

    # ------------------------------------------------------------ internals

    def _require_receiver(self) -> ServiceBusReceiver:
        if self._receiver is None:
            raise RuntimeError("ServiceBusSource is not open")
        return self._receiver

    def _make_client(self) -> ServiceBusClient:
        params, secrets = self._params, self._ctx.secrets
        if params.connection_string is not None:
            name = params.connection_string
            value = secrets.resolve(name).get_secret_value()
            try:
                return ServiceBusClient.from_connection_string(value, **_CLIENT_OPTIONS)
            except ValueError:
                # The SDK's message could quote the connection string, key included.
                raise ValueError(
                    f"secret {name!r} (connection_string) is not a Service Bus connection string"
                ) from None
        namespace, key_name, key = (
            params.fully_qualified_namespace,
            params.sas_key_name,
            params.sas_key,
        )
        if namespace is None or key_name is None or key is None:  # the params model forbids it
            raise ValueError("set connection_string, or fully_qualified_namespace with a SAS key")
        credential = AzureNamedKeyCredential(key_name, secrets.resolve(key).get_secret_value())
        return ServiceBusClient(namespace, credential, **_CLIENT_OPTIONS)

    async def _renew_failed(self, renewable: Any, error: Exception | None) -> None:
        # The runner still holds the message; its ack will find the lock lost.
        self._log.warning(
            "servicebus.lock_renewal_failed",
            message_id=getattr(renewable, "message_id", None),
            sequence_number=getattr(renewable, "sequence_number", None),
            error=_describe(error) if error is not None else None,
        )


class _OneAtATime:
    """The receiver as the AutoLockRenewer sees it: renewals wait their turn."""

    def __init__(self, receiver: ServiceBusReceiver, turn: asyncio.Lock) -> None:
        self._receiver = receiver
        self._turn = turn

    async def renew_message_lock(
        self, message: ServiceBusReceivedMessage, *, timeout: float | None = None
    ) -> Any:
        async with asyncio.timeout(RENEW_TIMEOUT), self._turn:
            return await self._receiver.renew_message_lock(message, timeout=timeout)


def _trigger(entity: str, message: ServiceBusReceivedMessage) -> Trigger:
    sequence = int(message.sequence_number or 0)
    message_id = str(message.message_id) if message.message_id else None
    body, poison = _body(message)
    return Trigger(
        key=message_id or f"seq-{sequence}",
        coordinates={
            "entity": entity,
            "message_id": message_id or "",
            "sequence_number": sequence,
        },
        subject=entity,
        body=body,
        message_key=message_id.encode() if message_id else None,
        headers=_headers(message),
        poison=poison,
        token=message,
    )


def _body(message: ServiceBusReceivedMessage) -> tuple[bytes, tuple[str, str] | None]:
    """The payload as bytes: data sections joined; a string or binary AMQP value
    (what JMS text messages send) as such; anything else cannot be mapped."""
    body_type = message.body_type
    body = message.body
    if body_type == AmqpMessageBodyType.DATA:
        if isinstance(body, bytes | bytearray | memoryview):
            return bytes(body), None
        return b"".join(bytes(section) for section in body), None
    if body_type == AmqpMessageBodyType.VALUE:
        if isinstance(body, str):
            return body.encode(), None
        if isinstance(body, bytes | bytearray | memoryview):
            return bytes(body), None
    kind = "sequence" if body_type == AmqpMessageBodyType.SEQUENCE else type(body).__name__
    return b"", ("undecodable", f"an AMQP {kind} body, not data or text")


def _headers(message: ServiceBusReceivedMessage) -> dict[str, str]:
    headers = {
        _text(name): _text(value) for name, value in (message.application_properties or {}).items()
    }
    for name, value in (
        ("content_type", message.content_type),
        ("correlation_id", message.correlation_id),
        ("subject", message.subject),
    ):
        if value:
            headers[HEADER_PREFIX + name] = _text(value)
    return headers


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__
