"""Live validation of a job's parameters by the service that runs its type.

The admin API validates ``params`` statically (the type's model in
``jobwire.contracts.job_types``). Some checks need what only the owning service
can reach — a search-sync profile against the source database's live schema —
so the API asks it, over core NATS request/reply on
``Subjects.validate_params(job_type)`` (no stream: nothing is stored):

- request: ``{"params": {...}}``, at most :data:`MAX_REQUEST_BYTES`;
- reply: ``{"problems": [{"field": "params.profile.table", "message": "..."}]}``
  (an empty list: the params are fine), or ``{"error": "<Type>: message"}`` when
  the service could not check (its check raised, or the request was unreadable).

Every instance of the owning service runs :func:`serve_validation` in the queue
group ``validate-<job type>``, so one instance answers each request.

A live check is a help, not a gate: :func:`check_live` returns ``None`` —
"not checked" — when nobody serves the type, nobody answers in time, or the
answer is an error. The caller then goes on with what static validation
allowed; an outage of a worker must not stop anyone from saving a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from jobwire.runtime.broker import Broker
from jobwire.runtime.logs import get_logger

log = get_logger("jobwire.validation")

# NATS' default max_payload: a job's params never legitimately exceed what a run's
# message can carry, and parsing an unbounded body would let one request take the
# service's memory.
MAX_REQUEST_BYTES = 1024 * 1024
# Enough for a person to fix a profile in rounds; keeps a reply well under max_payload.
MAX_PROBLEMS = 100
# An error reply is read by a person in the API's log: enough to say what failed.
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class ParamProblem:
    """One thing wrong with a job's params: ``field`` is a dotted path rooted at
    ``params`` (``params.profile.children.0.table``), as the admin API names the
    fields of its 422 problem documents."""

    field: str
    message: str

    @classmethod
    def at(cls, loc: Sequence[str | int], msg: str) -> ParamProblem:
        """A problem at ``loc`` inside the params (``("profile", "children", 0, "table")``)."""
        return cls(".".join(["params", *(str(part) for part in loc)]), msg)


ParamsCheck = Callable[[dict[str, Any]], Awaitable[list[ParamProblem]]]


def queue_group(job_type: str) -> str:
    return f"validate-{job_type}"


async def serve_validation(
    broker: Broker,
    job_type: str,
    check: ParamsCheck,
    stop: asyncio.Event,
    *,
    max_check_seconds: float = 30.0,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    serving: asyncio.Event | None = None,
) -> None:
    """Answer live validation requests for ``job_type`` with ``check`` until ``stop``.

    ``serving`` is set once the NATS server knows of the subscription (requests
    sent from then on reach this instance).

    Requests are answered one at a time: saving a job is rare, and a check may
    query a database. A check that raises, or runs past ``max_check_seconds``
    (whoever asked has long stopped waiting), gets an ``error`` reply and is
    logged; the loop goes on. So does a request body that is not JSON or is
    larger than ``max_request_bytes``.
    """
    subject = broker.subjects.validate_params(job_type)

    async def answer(msg: Msg) -> None:
        if not msg.reply:
            return  # a plain publish: nobody waits for an answer
        reply = await _reply_to(msg.data, job_type, check, max_check_seconds, max_request_bytes)
        try:
            await msg.respond(json.dumps(reply).encode())
        except Exception as exc:  # disconnected meanwhile: the requester times out
            log.warning("validation.reply_failed", job_type=job_type, error=type(exc).__name__)

    sub = await broker.nc.subscribe(subject, queue=queue_group(job_type), cb=answer)
    try:
        await broker.nc.flush()
        log.info("validation.serving", job_type=job_type, subject=subject)
        if serving is not None:
            serving.set()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):  # closing or disconnected: nothing to tell
            await sub.unsubscribe()


async def _reply_to(
    data: bytes, job_type: str, check: ParamsCheck, max_check_seconds: float, max_bytes: int
) -> dict[str, Any]:
    try:
        params = _request_params(data, max_bytes)
    except ValueError as exc:
        log.warning("validation.bad_request", job_type=job_type, error=str(exc))
        return {"error": _error_text(exc)}
    try:
        problems = await asyncio.wait_for(check(params), max_check_seconds)
    except Exception as exc:
        # The params are not logged: they may name what a log reader should not see.
        log.exception("validation.check_failed", job_type=job_type, error_type=type(exc).__name__)
        return {"error": _error_text(exc)}
    shown = problems[:MAX_PROBLEMS]
    return {"problems": [{"field": p.field, "message": p.message} for p in shown]}


def _request_params(data: bytes, max_bytes: int) -> dict[str, Any]:
    if len(data) > max_bytes:
        raise ValueError(f"request is {len(data)} bytes; at most {max_bytes} are read")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"request is not JSON: {exc}") from None
    params = body.get("params") if isinstance(body, dict) else None
    if not isinstance(params, dict):
        raise ValueError('request must be a JSON object {"params": {...}}')
    return params


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:_MAX_ERROR_CHARS]


async def check_live(
    broker: Broker, job_type: str, params: Mapping[str, Any], timeout: float
) -> list[ParamProblem] | None:
    """Ask the service owning ``job_type`` to check ``params``.

    Its problems (empty: none found), or ``None`` when the params could not be
    checked — no service serves the type, none answered within ``timeout``
    seconds, it answered with an error, or NATS is unreachable — logged at info
    (at debug for a type nobody serves: most types have no live check): a save
    goes on then.
    """
    subject = broker.subjects.validate_params(job_type)
    body = json.dumps({"params": dict(params)}).encode()
    try:
        msg = await broker.nc.request(subject, body, timeout=timeout)
        return _problems_of(msg.data)
    except nats.errors.NoRespondersError:
        log.debug("validation.not_served", job_type=job_type)
        return None
    except nats.errors.TimeoutError:
        reason = f"no answer within {timeout} s"
    except nats.errors.Error as exc:  # closed, reconnecting, over max_payload …
        reason = f"NATS: {type(exc).__name__}"
    except UnusableReply as exc:
        reason = str(exc)
    log.info("validation.not_checked", job_type=job_type, reason=reason)
    return None


class UnusableReply(ValueError):
    """The owner's reply says it could not check, or cannot be read."""


def _problems_of(data: bytes) -> list[ParamProblem]:
    try:
        reply = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnusableReply("the reply is not JSON") from None
    if not isinstance(reply, dict):
        raise UnusableReply("the reply is not a JSON object")
    if "error" in reply:
        error = str(reply["error"])[:_MAX_ERROR_CHARS]
        raise UnusableReply(f"the service could not check: {error}")
    items = reply.get("problems")
    if not isinstance(items, list):
        raise UnusableReply("the reply has no problems list")
    problems = []
    for item in items:
        field = item.get("field") if isinstance(item, dict) else None
        message = item.get("message") if isinstance(item, dict) else None
        if not isinstance(field, str) or not isinstance(message, str):
            raise UnusableReply("a problem in the reply lacks a field or message string")
        problems.append(ParamProblem(field, message))
    return problems
