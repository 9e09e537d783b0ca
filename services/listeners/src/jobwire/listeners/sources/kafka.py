"""Kafka source: every record of the subscribed topics is one trigger.

A record's offset is committed only once the runner acked it and every record
before it in its partition, so what is committed has its StartWorkflow stored.
Anything received but not acked — after a crash, a restart or a rebalance —
is read again from the last committed offset; the trigger key
(``topic/partition/offset``) is the idempotency key, which makes that harmless.

Rebalances: aiokafka revokes every partition before a new assignment (eager
protocol). The revoke callback gives the batch in flight a bounded time to be
acked, then commits what was acked ("commit on revoke"), so the next owner
starts right after it. An ack that arrives later is not committed: the
partition may already belong to another member, and committing there could
move the group's offset backwards.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    IllegalStateError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from jobwire.contracts.listeners import KafkaSubscriberParams
from jobwire.listeners.sources import SourceContext, Trigger
from jobwire.runtime.logs import get_logger

__all__ = ["KafkaSource"]

log = get_logger("jobwire.listeners.kafka")

# aiokafka's start() retries bootstrap, metadata and the group join for as long
# as its request timeouts allow (40 s per request by default): the runner must
# hear about an unreachable cluster sooner, whatever the params say. Below the
# runner's own open timeout (30 s by default), so that this error, naming the
# group and the brokers, is the one reported.
OPEN_TIMEOUT = 25.0
# An ack whose commit cannot finish (coordinator gone) raises after this, and
# the runner retries it; aiokafka alone would retry the commit forever.
COMMIT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
# Longest a revoked member waits for its batch in flight before letting the
# rebalance go on; the group's other members wait for it meanwhile.
REVOKE_WAIT_CAP = 10.0

# A commit that lost a race with a rebalance: the partition may already be
# another member's, which re-reads from the last committed offset.
_COMMIT_RACE_ERRORS: tuple[type[Exception], ...] = (
    CommitFailedError,
    IllegalGenerationError,
    UnknownMemberIdError,
    RebalanceInProgressError,
    IllegalStateError,
)


class KafkaSource:
    """A Kafka consumer-group member; implements ``jobwire.listeners.sources.Source``.

    Triggers carry ``token = (TopicPartition, offset)``. Acks commit, per
    partition still assigned, the highest acked offset + 1; a commit that
    loses a race with a rebalance is logged, not raised (its records are
    redelivered and deduplicated), any other commit failure raises.
    """

    def __init__(
        self,
        params: KafkaSubscriberParams,
        ctx: SourceContext,
        *,
        open_timeout: float = OPEN_TIMEOUT,
    ) -> None:
        self._params = params
        self._ctx = ctx
        self._open_timeout = open_timeout
        self._group_id = params.group_id or ctx.name
        self._client_id = f"jobwire-{ctx.definition.job_id}-{ctx.slot}"
        session_s = params.session_timeout_ms / 1000
        self._revoke_wait = min(session_s / 2, REVOKE_WAIT_CAP)
        self._log = log.bind(job_id=ctx.definition.job_id, slot=ctx.slot, group=self._group_id)

        self._consumer: AIOKafkaConsumer | None = None
        # Offsets received and not yet acked, per partition.
        self._in_flight: dict[TopicPartition, set[int]] = {}
        # Highest acked offset, and the next offset this member committed.
        self._acked: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        # Partitions whose acks may be committed: assigned and not being revoked.
        self._owned: set[TopicPartition] = set()
        # Offsets are computed under this lock so commits never go backwards.
        self._commit_lock = asyncio.Lock()
        self._acked_event = asyncio.Event()
        # True while the revoke callback waits for the batch in flight (tests watch it).
        self._revoking = False

    async def open(self) -> None:
        params = self._params
        consumer = AIOKafkaConsumer(
            bootstrap_servers=params.bootstrap_servers,
            client_id=self._client_id,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset=params.start_from,
            session_timeout_ms=params.session_timeout_ms,
            heartbeat_interval_ms=params.heartbeat_interval_ms,
            fetch_max_wait_ms=params.batch_max_wait_ms,
            rebalance_timeout_ms=self._rebalance_timeout_ms(),
            request_timeout_ms=max(40_000, self._rebalance_timeout_ms() + 5_000),
            **self._security_options(),
        )
        self._consumer = consumer
        listener = _CommitOnRevoke(self)
        if params.topic_pattern is not None:
            consumer.subscribe(pattern=params.topic_pattern, listener=listener)
        else:
            consumer.subscribe(topics=params.topics, listener=listener)
        try:
            # With a topic subscription start() also waits for the first assignment.
            async with asyncio.timeout(self._open_timeout):
                await consumer.start()
        except TimeoutError:
            await self.close()
            raise TimeoutError(
                f"Kafka consumer group {self._group_id!r} not joined within "
                f"{self._open_timeout:g} s (bootstrap {', '.join(params.bootstrap_servers)})"
            ) from None
        except BaseException:
            await self.close()
            raise
        self._log.info("kafka.opened", assigned=_names(consumer.assignment()))

    async def receive(self, max_items: int, timeout: float) -> Sequence[Trigger]:
        consumer = self._require_consumer()
        try:
            # getmany() waits for a rebalance to finish ignoring its own timeout.
            async with asyncio.timeout(timeout):
                batches = await consumer.getmany(
                    timeout_ms=int(timeout * 1000), max_records=max_items
                )
        except TimeoutError:
            return []
        triggers: list[Trigger] = []
        for tp, records in batches.items():
            pending = self._in_flight.setdefault(tp, set())
            for record in records:
                pending.add(record.offset)
                triggers.append(_trigger(tp, record))
        return triggers

    async def ack(self, triggers: Sequence[Trigger]) -> None:
        for trigger in triggers:
            tp, offset = trigger.token
            pending = self._in_flight.get(tp)
            # Not in flight: received under an assignment since revoked, whose
            # records the partition's current owner reads again.
            if pending is None or offset not in pending:
                continue
            pending.discard(offset)
            if not pending:
                del self._in_flight[tp]
            if offset > self._acked.get(tp, -1):
                self._acked[tp] = offset
        self._acked_event.set()
        await self._commit(None, COMMIT_TIMEOUT)

    async def release(self, triggers: Sequence[Trigger]) -> None:
        """Nothing to do: uncommitted records are read again by this partition's owner."""

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await _stop(consumer)
        except Exception as error:
            self._log.warning("kafka.close_failed", error=_describe(error))
        self._owned.clear()
        self._in_flight.clear()

    def lag(self) -> int | None:
        """Records not yet received, from the highwater marks of the last fetch."""
        consumer = self._consumer
        if consumer is None:
            return None
        total = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = _cached_position(consumer, tp)
            if highwater is None or position is None:
                return None
            total += max(0, highwater - position)
        return total

    # ------------------------------------------------------------ internals

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("KafkaSource is not open")
        return self._consumer

    def _rebalance_timeout_ms(self) -> int:
        # Room for a member to notice the rebalance (a heartbeat), wait for its
        # batch in flight and commit it, before the coordinator gives up on it.
        return self._params.session_timeout_ms + int(2 * self._revoke_wait * 1000)

    def _security_options(self) -> dict[str, Any]:
        params = self._params
        options: dict[str, Any] = {"security_protocol": params.security_protocol}
        if params.security_protocol.startswith("SASL"):
            mechanism, user, password = (
                params.sasl_mechanism,
                params.sasl_username,
                params.sasl_password,
            )
            if mechanism is None or user is None or password is None:  # params forbid it
                raise ValueError("SASL needs sasl_mechanism, sasl_username and sasl_password")
            secrets = self._ctx.secrets
            options["sasl_mechanism"] = mechanism
            options["sasl_plain_username"] = secrets.resolve(user).get_secret_value()
            options["sasl_plain_password"] = secrets.resolve(password).get_secret_value()
        if params.security_protocol.endswith("SSL"):
            options["ssl_context"] = self._ssl_context()
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        name = self._params.ssl_ca
        if name is None:
            return ssl.create_default_context()
        ca = self._ctx.secrets.resolve(name).get_secret_value()
        try:
            return ssl.create_default_context(cadata=ca)
        except (ssl.SSLError, ValueError):
            # The library's message could quote the secret's content.
            raise ValueError(f"secret {name!r} (ssl_ca) is not a PEM CA certificate") from None

    async def _commit(self, only: Iterable[TopicPartition] | None, timeout: float) -> None:
        """Commit the acked offsets of ``only`` (default: the owned partitions).

        Raises on failure, except when the commit lost a race with a rebalance.
        """
        consumer = self._consumer
        if consumer is None:
            return
        async with asyncio.timeout(timeout), self._commit_lock:
            candidates = self._owned if only is None else set(only)
            # aiokafka refuses offsets of partitions it no longer has assigned.
            assigned = consumer.assignment()
            offsets = {
                tp: self._acked[tp] + 1
                for tp in candidates
                if tp in assigned
                and tp in self._acked
                and self._acked[tp] + 1 > self._committed.get(tp, -1)
            }
            if not offsets:
                return
            if _membership_lost(consumer):
                # The coordinator expelled this member (session expired): its
                # partitions are someone else's, and a commit could rewind them.
                self._log.warning(
                    "kafka.commit_skipped_membership_lost", offsets=_named_offsets(offsets)
                )
                return
            try:
                await consumer.commit(offsets)
            except _COMMIT_RACE_ERRORS as error:
                self._log.warning(
                    "kafka.commit_lost_to_rebalance",
                    offsets=_named_offsets(offsets),
                    error=_describe(error),
                )
                return
            self._committed.update(offsets)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        consumer = self._consumer
        if consumer is not None and _membership_lost(consumer):
            # Expelled, not asked: the partitions are already someone else's,
            # so there is nothing to wait for and nothing safe to commit.
            self._log.warning(
                "kafka.partitions_lost",
                partitions=_names(revoked),
                redelivered=self._forget(revoked),
            )
            return
        self._revoking = True
        started = time.monotonic()
        try:
            settled = await self._wait_acked(revoked, self._revoke_wait)
            # From here on an ack of these partitions is not committed: the
            # next owner may already be past it.
            self._owned -= revoked
            try:
                await self._commit(revoked, self._revoke_wait)
            except Exception as error:
                self._log.warning(
                    "kafka.commit_on_revoke_failed",
                    partitions=_names(revoked),
                    error=_describe(error),
                )
            self._log.info(
                "kafka.partitions_revoked",
                partitions=_names(revoked),
                in_flight_settled=settled,
                redelivered=self._forget(revoked),
                waited_s=round(time.monotonic() - started, 3),
            )
        finally:
            self._revoking = False

    def _forget(self, partitions: set[TopicPartition]) -> int:
        """Drop what this member knew of ``partitions``; the count of records left unacked."""
        self._owned -= partitions
        unacked = 0
        for tp in partitions:
            unacked += len(self._in_flight.pop(tp, ()))
            self._acked.pop(tp, None)
            self._committed.pop(tp, None)
        return unacked

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._owned = set(assigned)
        self._log.info("kafka.partitions_assigned", partitions=_names(assigned))

    async def _wait_acked(self, partitions: set[TopicPartition], timeout: float) -> bool:
        """Wait until nothing of ``partitions`` is in flight; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while any(tp in self._in_flight for tp in partitions):
                    self._acked_event.clear()
                    await self._acked_event.wait()
        except TimeoutError:
            return False
        return True


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._source._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._source._on_assigned(set(assigned))


def _trigger(tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> Trigger:
    headers: dict[str, str] = {}
    for name, value in record.headers or ():
        # Kafka allows repeated and null headers; the last one of a name wins.
        headers[name] = value.decode("utf-8", errors="backslashreplace") if value else ""
    return Trigger(
        key=f"{record.topic}/{record.partition}/{record.offset}",
        coordinates={"topic": record.topic, "partition": record.partition, "offset": record.offset},
        subject=record.topic,
        # A tombstone (null value) becomes an empty body.
        body=record.value or b"",
        message_key=record.key,
        headers=headers,
        token=(tp, record.offset),
    )


async def _stop(consumer: AIOKafkaConsumer) -> None:
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiokafka #647: with the broker gone, stop() cancels a fetch sleeping
        # in its retry backoff and lets that task's CancelledError escape,
        # leaving the other fetches and every connection open. Finish the job.
        log.info("kafka.stop_completed_by_hand", reason="aiokafka stop() raised CancelledError")
        fetcher = getattr(consumer, "_fetcher", None)
        tasks = [getattr(fetcher, "_fetch_task", None), *getattr(fetcher, "_pending_tasks", ())]
        running = [t for t in tasks if isinstance(t, asyncio.Future) and not t.done()]
        for fetch in running:
            fetch.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        client = getattr(consumer, "_client", None)
        if client is not None:
            await client.close()


def _cached_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    # aiokafka has no synchronous position accessor (position() may wait on
    # the network), so read the fetcher's cached state; None if not there yet.
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
    except AttributeError:
        return None
    if state is None or not state.has_valid_position:
        return None
    return int(state.position)


def _membership_lost(consumer: AIOKafkaConsumer) -> bool:
    # aiokafka resets the generation to -1 when the coordinator no longer
    # knows this member, and calls on_partitions_revoked for partitions that
    # are in fact lost (it has no on_partitions_lost).
    coordinator = getattr(consumer, "_coordinator", None)
    generation = getattr(coordinator, "generation", 0)
    return isinstance(generation, int) and generation < 0


def _describe(error: BaseException) -> str:
    # aiokafka's CommitFailedError carries a paragraph of advice; the cause
    # (UnknownMemberIdError, IllegalGenerationError …) says what happened.
    cause = error.__cause__
    return f"{type(error).__name__}({type(cause).__name__})" if cause else repr(error)


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)


def _named_offsets(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {f"{tp.topic}/{tp.partition}": offset for tp, offset in sorted(offsets.items())}
