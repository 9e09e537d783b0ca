"""The worker loop: run the JobDue commands of one job type and report each run.

A worker service declares its job type and one ``async def handler(run)``; the
kit does the rest the same way for every job type::

    worker = Worker(ctx.broker, job_type="archive-data", handler=archive, concurrency=4)
    await worker.run(ctx.stopping)

Delivery and attempts
    All replicas share one durable JetStream consumer per job type
    (``worker-<job type>``), so each JobDue goes to one of them. The attempt
    number is JetStream's delivery count: a worker that dies mid-run leaves
    the JobDue unacknowledged, it is redelivered after the ack wait, and that
    delivery is the next attempt (never lower than the last attempt recorded
    as started plus one: the server may restart its count after a delivery
    it considers failed). While a handler runs, the worker tells
    JetStream every ``heartbeat_seconds`` that it is still at work, so a long
    run is not redelivered; ``ack_wait_seconds`` must therefore exceed it.

Outcomes (the only times a JobDue is settled)
    * succeeded / cancelled: ``RunFinished`` is published and stored, then ack.
      Cancelled means requested (``RunCancelRequested``): ``run.cancelled`` is
      set, and a handler still running ``cancel_grace_seconds`` later is
      cancelled. Cancelled runs are not retried.
    * failed (the handler raised, or ran past ``JobDue.timeout_seconds`` and
      was cancelled: error type ``timeout``) with attempts left: nak with
      exponential backoff; no final event, a RunProgress says why.
    * failed on the last attempt (or a redelivery beyond it, the previous
      attempt having been lost): a dead letter with reason
      ``attempts_exhausted`` and the original JobDue, ``RunFinished(failed)``,
      then term.
    * a JobDue that does not decode: dead letter ``undecodable``, term.

Idempotency
    Every event's ``Nats-Msg-Id`` derives from the run: ``<run>:<attempt>:started``,
    ``<run>:<attempt>:progress:<n>``, ``<run>:finished`` and the dead letter's
    ``dlq:<job type>:<run>``. A worker that crashes between publishing the
    outcome and acking therefore cannot record a second outcome, and the
    redelivery finds the stored ``RunFinished`` and is acked without running
    the handler again. A run whose cancellation was requested before it
    reached a worker (queued, or waiting for a retry) finishes as cancelled
    without running.

Shutdown
    Once ``stop`` is set no more JobDue are taken and running handlers finish.
    If :meth:`Worker.run` is cancelled (the service's grace period ran out),
    handlers are cancelled and their JobDue handed back for another replica;
    such an interrupted attempt counts as an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from jobwire.contracts.envelope import Contract, decode, utcnow
from jobwire.contracts.jobs import JobDue
from jobwire.contracts.runs import RunError, RunFinished, RunProgress, RunStarted, RunStatus
from jobwire.contracts.subjects import RunEvent, Stream, token
from jobwire.runtime.broker import AckPolicy, Broker, Delivery
from jobwire.runtime.logs import get_logger
from jobwire.runtime.waits import retry_delay

log = get_logger("jobwire.worker")

Handler = Callable[["RunContext"], Awaitable[dict[str, Any] | None]]
T = TypeVar("T")

#: Dead-letter reason of a run whose attempts all failed.
ATTEMPTS_EXHAUSTED = "attempts_exhausted"


def durable_name(job_type: str) -> str:
    """The consumer all workers of ``job_type`` share."""
    return f"worker-{token(job_type, 'job type')}"


class RunContext:
    """One attempt of one run, as its handler sees it.

    ``due`` is the JobDue, ``attempt`` its attempt number (1 for the first
    try), ``state`` the job's persisted state. Call :meth:`set_state` to hand
    a new state to the job's next run (it travels in ``RunFinished.state``),
    :meth:`progress` to report how far the run has come, and watch
    ``cancelled``: once set, stop at the next checkpoint and return; a handler
    still running ``cancel_grace_seconds`` later is cancelled. A handler must
    let :class:`asyncio.CancelledError` propagate.
    """

    def __init__(self, worker: Worker, delivery: Delivery[JobDue], attempt: int) -> None:
        self.due: JobDue = delivery.data
        self.attempt = attempt
        self.cancelled = asyncio.Event()
        self._worker = worker
        self._msg: Msg = delivery.msg
        self._state = copy.deepcopy(self.due.state)
        self._state_set = False
        self._message: str | None = None
        self._percent: float | None = None
        self._counters: dict[str, int] = {}
        self._progress_seq = 0
        self._executing = False  # heartbeats report progress only while the handler runs
        self._last_progress = asyncio.get_running_loop().time()

    @property
    def run_id(self) -> str:
        return self.due.run_id

    @property
    def state(self) -> dict[str, Any] | None:
        """The job's state: as the last finished run left it, or as set since."""
        return self._state

    def set_state(self, state: dict[str, Any]) -> None:
        """Persist ``state`` (JSON-able) for the job's next run; the last call wins."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, not {type(state).__name__}")
        self._state = state
        self._state_set = True

    async def progress(
        self,
        message: str | None = None,
        percent: float | None = None,
        counters: dict[str, int] | None = None,
    ) -> None:
        """Report progress and extend the JobDue's ack deadline.

        Arguments left out keep their last value; ``counters`` are running
        totals, merged by name. Reporting is best effort: a broker failure is
        logged, not raised, since the next report supersedes this one.
        """
        # Invalid input raises here, to the handler, and is not kept for the
        # heartbeats to trip over.
        event = RunProgress(
            run_id=self.run_id,
            attempt=self.attempt,
            at=utcnow(),
            message=self._message if message is None else message,
            percent=self._percent if percent is None else percent,
            counters={**self._counters, **(counters or {})},
        )
        self._message, self._percent, self._counters = event.message, event.percent, event.counters
        await self._worker._extend(self)
        await self._worker._publish_progress(self, event)

    def _progress_event(self) -> RunProgress:
        return RunProgress(
            run_id=self.run_id,
            attempt=self.attempt,
            at=utcnow(),
            message=self._message,
            percent=self._percent,
            counters=self._counters,
        )


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: RunStatus
    result: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    error: RunError | None = None


class Worker:
    """Runs the JobDue commands of one job type with ``handler``; see the module docstring.

    Acks a JobDue only after its ``RunFinished`` was stored by JetStream (or,
    for a failed attempt with attempts left, naks it for a delayed retry).
    Handler side effects may run more than once for a run — a worker lost
    after the side effect and before the outcome was stored leads to another
    attempt — so handlers should be idempotent; run events are recorded once.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        job_type: str,
        handler: Handler,
        concurrency: int = 1,
        heartbeat_seconds: float = 10.0,
        ack_wait_seconds: float = 30.0,
        cancel_grace_seconds: float = 5.0,
        retry_backoff_seconds: float = 10.0,
        max_backoff_seconds: float = 600.0,
        max_ack_pending: int = 1000,
        host: str | None = None,
        instance_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if heartbeat_seconds <= 0:
            raise ValueError("heartbeat_seconds must be positive")
        if heartbeat_seconds >= ack_wait_seconds:
            raise ValueError(
                f"heartbeat_seconds ({heartbeat_seconds:g}) must be shorter than "
                f"ack_wait_seconds ({ack_wait_seconds:g}), or long runs are redelivered"
            )
        if cancel_grace_seconds < 0:
            raise ValueError("cancel_grace_seconds must not be negative")
        if retry_backoff_seconds <= 0 or max_backoff_seconds < retry_backoff_seconds:
            raise ValueError("need 0 < retry_backoff_seconds <= max_backoff_seconds")
        if max_ack_pending < concurrency:
            raise ValueError("max_ack_pending must be at least concurrency")
        self.broker = broker
        self.subjects = broker.subjects
        self.job_type = job_type
        self.durable = durable_name(job_type)
        self.handler = handler
        self.concurrency = concurrency
        self.heartbeat_seconds = heartbeat_seconds
        self.ack_wait_seconds = ack_wait_seconds
        self.cancel_grace_seconds = cancel_grace_seconds
        self.retry_backoff_seconds = retry_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.max_ack_pending = max_ack_pending
        self.host = host or broker.settings.host
        self.instance_id = instance_id or broker.settings.instance_id
        self._running: dict[str, RunContext] = {}

    @property
    def in_flight(self) -> list[str]:
        """Run ids this worker is executing now."""
        return list(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        """Take and run JobDue commands until ``stop`` is set and running ones finished."""
        filter_subject = self.subjects.job_due(self.job_type)
        # One subscription for every run here, not one per run.
        cancels: Subscription = await self.broker.nc.subscribe(
            self.subjects.all_run_events(RunEvent.CANCEL_REQUESTED), cb=self._on_cancel_requested
        )
        log.info(
            "worker.started",
            job_type=self.job_type,
            durable=self.durable,
            concurrency=self.concurrency,
        )
        try:
            await self.broker.consume(
                stream=Stream.JOBS,
                durable=self.durable,
                filter_subject=filter_subject,
                model=JobDue,
                handler=self._handle,
                stop=stop,
                ack=AckPolicy.MANUAL,
                batch=self.concurrency,
                ack_wait_seconds=self.ack_wait_seconds,
                dlq_source=self.job_type,
                concurrency=self.concurrency,
                max_ack_pending=self.max_ack_pending,
            )
        finally:
            if not self.broker.nc.is_closed:
                with contextlib.suppress(Exception):  # best effort, as in consume()
                    await cancels.unsubscribe()
            log.info("worker.stopped", job_type=self.job_type)

    # -- one delivery -----------------------------------------------------------

    async def _on_cancel_requested(self, msg: Msg) -> None:
        # <ns>.runs.<run id>.cancel: the run id is all we need to filter.
        run = self._running.get(msg.subject.rsplit(".", 2)[-2])
        if run is not None and not run.cancelled.is_set():
            log.info("run.cancel_requested", run_id=run.run_id, attempt=run.attempt)
            run.cancelled.set()

    async def _handle(self, delivery: Delivery[JobDue]) -> None:
        due = delivery.data
        # The JobDue's own attempt is 1 unless its producer retried it itself.
        run = RunContext(self, delivery, attempt=due.attempt + delivery.attempt - 1)
        if due.run_id in self._running:
            # Redelivered while still running here (heartbeats did not get
            # through in time): the attempt in progress settles the message.
            log.warning("run.redelivered_while_running", run_id=due.run_id)
            return
        self._running[due.run_id] = run
        heartbeat = asyncio.create_task(self._heartbeat(run), name=f"heartbeat-{due.run_id}")
        try:
            await self._process(run)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            del self._running[due.run_id]

    async def _process(self, run: RunContext) -> None:
        due, msg = run.due, run._msg
        finished, cancel_requested, last_started = await asyncio.gather(
            self._stored(run, RunEvent.FINISHED),
            self._stored(run, RunEvent.CANCEL_REQUESTED),
            self._stored(run, RunEvent.STARTED),
        )
        if finished is not None:
            log.info("run.already_finished", run_id=run.run_id, attempt=run.attempt)
            await msg.ack()
            return
        if cancel_requested is not None:
            run.cancelled.set()
        # JetStream's delivery count is the attempt, but the server restarts
        # it at 1 after a redelivery it considers failed; an attempt that was
        # recorded as started always counts.
        run.attempt = max(run.attempt, _attempt_of(last_started) + 1)
        if run.attempt > due.max_attempts:
            error = RunError(
                type="interrupted",
                message=f"attempt {run.attempt - 1} of {due.max_attempts} was interrupted "
                "(its worker stopped or was lost) and no attempts are left",
            )
            await self._fail(run, error)
            return
        if run.cancelled.is_set():
            await self._finish(run, _Outcome("cancelled", state=None))
            await msg.ack()
            return
        started = RunStarted(
            run_id=run.run_id,
            job_id=due.job_id,
            job_name=due.job_name,
            job_type=due.job_type,
            attempt=run.attempt,
            host=self.host,
            instance_id=self.instance_id,
            started_at=utcnow(),
        )
        await self._publish(run, RunEvent.STARTED, started, f"{run.run_id}:{run.attempt}:started")
        log.info("run.started", run_id=run.run_id, attempt=run.attempt, job_type=due.job_type)
        outcome = await self._execute(run)
        if outcome.status != "failed":
            await self._finish(run, outcome)
            await msg.ack()
            return
        assert outcome.error is not None
        if run.attempt < due.max_attempts:
            base = due.retry_backoff_seconds or self.retry_backoff_seconds
            delay = retry_delay(base, run.attempt, self.max_backoff_seconds)
            log.warning(
                "run.attempt_failed",
                run_id=run.run_id,
                attempt=run.attempt,
                error_type=outcome.error.type,
                error=outcome.error.message,
                retry_in_seconds=delay,
            )
            # Not an outcome, but run history should say why the attempt ended.
            run._message = f"attempt {run.attempt} failed ({outcome.error.type}: "
            run._message += f"{outcome.error.message}); retrying in {delay:g} s"
            await self._publish_progress(run, run._progress_event())
            await msg.nak(delay=delay)
            return
        await self._fail(run, outcome.error)

    async def _execute(self, run: RunContext) -> _Outcome:
        """Run the handler under its timeout and cancellation; classify how it ended."""
        task = asyncio.create_task(self._call(run), name=f"run-{run.run_id}")
        run._executing = True
        try:
            timed_out = await self._supervise(run, task)
        except asyncio.CancelledError:  # shutdown: hand the run back
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            run._executing = False
        state = run._state if run._state_set else None
        if run.cancelled.is_set():
            result = None
            if not task.cancelled() and task.exception() is None:
                result = task.result()
            return self._checked(run, _Outcome("cancelled", result=result, state=state))
        if timed_out:
            timeout = run.due.timeout_seconds
            return _Outcome(
                "failed",
                error=RunError(
                    type="timeout",
                    message=f"attempt {run.attempt} did not finish within {timeout:g} s",
                ),
            )
        if task.cancelled():
            return _Outcome(
                "failed", error=RunError(type="CancelledError", message="handler was cancelled")
            )
        exc = task.exception()
        if exc is not None:
            return _Outcome("failed", error=_error_of(exc))
        return self._checked(run, _Outcome("succeeded", result=task.result(), state=state))

    async def _call(self, run: RunContext) -> dict[str, Any] | None:
        return await self.handler(run)

    async def _supervise(self, run: RunContext, task: asyncio.Task[Any]) -> bool:
        """Wait for the handler; True if it was cancelled for running out of time."""
        loop = asyncio.get_running_loop()
        timeout = run.due.timeout_seconds
        deadline = None if timeout is None else loop.time() + timeout
        cancel_requested = asyncio.ensure_future(run.cancelled.wait())
        try:
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            done, _ = await asyncio.wait(
                {task, cancel_requested}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return False
            if cancel_requested in done:
                grace = self.cancel_grace_seconds
                if deadline is not None:
                    grace = min(grace, max(deadline - loop.time(), 0.0))
                done, _ = await asyncio.wait({task}, timeout=grace)
                if not done:
                    log.warning("run.cancel_forced", run_id=run.run_id, attempt=run.attempt)
                    await _cancel(task)
                return False
            await _cancel(task)
            return True
        finally:
            cancel_requested.cancel()

    def _checked(self, run: RunContext, outcome: _Outcome) -> _Outcome:
        """``outcome``, or a failure if its result or state cannot be published."""
        try:
            finished = self._finished_event(run, outcome)
            finished.__pydantic_serializer__.to_json(finished)
        except Exception as exc:
            error = RunError(
                type="invalid_result",
                message=f"the handler's result or state cannot be published: {exc}",
            )
            return _Outcome("failed", error=error)
        return outcome

    def _finished_event(self, run: RunContext, outcome: _Outcome) -> RunFinished:
        return RunFinished(
            run_id=run.run_id,
            job_id=run.due.job_id,
            job_type=run.due.job_type,
            attempt=run.attempt,
            status=outcome.status,
            finished_at=utcnow(),
            result=outcome.result,
            error=outcome.error,
            state=outcome.state,
        )

    async def _finish(self, run: RunContext, outcome: _Outcome) -> None:
        event = self._finished_event(run, outcome)
        await self._publish(run, RunEvent.FINISHED, event, f"{run.run_id}:finished")
        log.info(
            "run.finished",
            run_id=run.run_id,
            attempt=run.attempt,
            status=outcome.status,
            error_type=outcome.error.type if outcome.error else None,
        )

    async def _fail(self, run: RunContext, error: RunError) -> None:
        # Dead letter first: once RunFinished is stored a redelivery is acked
        # as done, and a dead letter not yet written would never be.
        detail = f"{error.type}: {error.message}"
        await self._retrying(
            "dead_letter",
            run,
            lambda: self.broker.dead_letter(
                self.job_type, run._msg, ATTEMPTS_EXHAUSTED, detail, attempts=run.attempt
            ),
        )
        await self._finish(run, _Outcome("failed", error=error))
        await run._msg.term()

    # -- broker I/O -------------------------------------------------------------

    async def _stored(self, run: RunContext, event: RunEvent) -> bytes | None:
        """The last ``event`` the RUNS stream holds for this run, if any."""
        stream = self.subjects.stream_name(Stream.RUNS)
        subject = self.subjects.run_event(run.run_id, event)

        async def look_up() -> bytes | None:
            try:
                stored = await self.broker.js.get_last_msg(stream, subject)
            except NotFoundError:
                return None
            return stored.data or b""

        return await self._retrying(f"look_up_{event.value}", run, look_up)

    async def _publish(self, run: RunContext, event: RunEvent, data: Contract, msg_id: str) -> None:
        subject = self.subjects.run_event(run.run_id, event)

        async def publish() -> None:
            await self.broker.publish(subject, data, msg_id=msg_id, ce_subject=run.run_id)

        await self._retrying(f"publish_{event.value}", run, publish)

    async def _retrying(self, what: str, run: RunContext, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it succeeds: a broker outage delays a run's record, never drops it.

        The heartbeat keeps the JobDue in progress meanwhile; a worker
        stopped while waiting hands the JobDue back.
        """
        delay = 0.5
        while True:
            try:
                return await call()
            except Exception as exc:
                log.warning(
                    "worker.broker_call_failed",
                    call=what,
                    run_id=run.run_id,
                    error=str(exc) or type(exc).__name__,
                    retry_in_seconds=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _publish_progress(self, run: RunContext, event: RunProgress) -> None:
        run._progress_seq += 1
        run._last_progress = asyncio.get_running_loop().time()
        msg_id = f"{run.run_id}:{run.attempt}:progress:{run._progress_seq}"
        subject = self.subjects.run_event(run.run_id, RunEvent.PROGRESS)
        try:
            await self.broker.publish(subject, event, msg_id=msg_id, ce_subject=run.run_id)
        except Exception as exc:
            log.warning("run.progress_not_published", run_id=run.run_id, error=str(exc))

    async def _extend(self, run: RunContext) -> None:
        """Reset the JobDue's ack deadline."""
        try:
            await run._msg.in_progress()
        except Exception as exc:
            log.warning("run.in_progress_failed", run_id=run.run_id, error=str(exc))

    async def _heartbeat(self, run: RunContext) -> None:
        """Keep the JobDue from redelivery while this worker holds it, and say so."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            await self._extend(run)
            if run._executing and loop.time() - run._last_progress >= self.heartbeat_seconds * 0.9:
                await self._publish_progress(run, run._progress_event())


def _attempt_of(started: bytes | None) -> int:
    """The attempt a stored RunStarted reports; 0 for none."""
    if started is None:
        return 0
    try:
        return decode(started, RunStarted).data.attempt
    except ValidationError:
        return 0


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait({task})


def _error_of(exc: BaseException) -> RunError:
    return RunError(
        type=type(exc).__name__,
        message=str(exc) or type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)),
    )
