"""What every request passes before FastAPI sees it: a token, a size, a JSON body.

FastAPI reads and parses a request's body before it resolves the dependencies
that authenticate it, so without this an anonymous client could make the
scheduler buffer (and parse) any amount of data — on the event loop that also
fires the jobs. This pure ASGI middleware, in front of the routes:

0. handles at most ``max_concurrent_requests`` requests at once; the others wait
   their turn, their bodies unread. That bounds the memory held in bodies (that
   many times ``max_request_bytes``) and, as the API shares its event loop with the
   firing loop, how many API callbacks queue ahead of a fire at each of its
   awaits: a flood of requests then waits in the sockets, not in the loop;
1. authenticates from the ``Authorization`` header alone (401 before a byte of
   the body is read) on every ``/api/v1`` path but the public ones;
2. refuses a body larger than ``max_request_bytes``: by its ``Content-Length``
   at once, and a chunked one as soon as it streams past the limit (413);
3. refuses a body that is not JSON by its ``Content-Type`` (415), not UTF-8, or
   nested deeper than :data:`MAX_DEPTH` (400) — checked before Python's parser
   sees it, which would otherwise raise RecursionError a thousand levels down.

A refusal sent before the body was read closes the connection, so that the
server does not go on receiving (and discarding) the rest of it.
"""

from __future__ import annotations

import asyncio
import itertools
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobwire.scheduler.api.context import ApiContext
from jobwire.scheduler.api.problems import ProblemError, problem_response
from jobwire.scheduler.api.tokens import authenticate

MAX_DEPTH = 64
PUBLIC = frozenset(
    {"/api/v1/health", "/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/oauth2-redirect"}
)
STATE_KEY = "jobwire_token"  # where the token found is left for auth.py, in scope["state"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="jobwire"'}
_CLOSE = {"Connection": "close"}
_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
# Strings first (their brackets are text, not nesting), then everything but brackets.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets → +1, closing → -1 (as signed bytes): the running sum is the depth.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_SLICE = 16 * 1024


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether ``body`` nests arrays and objects more than ``limit`` deep (brackets in
    strings do not count). Linear, every step in C: it may be a megabyte of ``[``."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # not enough brackets to go that deep
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS).translate(_STEPS)
    steps = memoryview(brackets).cast("b")
    depth = 0
    # A slice at a time: a body built to be deep is found out in its first slice.
    for start in range(0, len(steps), _SLICE):
        piece = steps[start : start + _SLICE]
        if max(itertools.accumulate(piece, initial=depth)) > limit:
            return True
        depth += sum(piece)
    return False


def body_problem(body: bytes) -> str | None:
    """Why ``body`` is not a JSON document this API parses, or None."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 at byte {exc.start}"
    if nested_deeper_than(body, MAX_DEPTH):
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    return None


class RequestGuard:
    def __init__(self, app: ASGIApp, api: ApiContext) -> None:
        self.app = app
        self.api = api
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC:
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.api.max_concurrent_requests)
        async with self._slots:
            await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        length_header = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        has_body = chunked or (length_header not in (None, "0"))
        refuse = _Refusal(scope, receive, send, close=has_body)
        try:
            if _needs_token(scope["path"]):
                await self._authenticate(scope, headers)
            if not has_body:
                await self.app(scope, receive, send)
                return
            limit = self.api.max_request_bytes
            _check_content_type(headers.get("content-type"))
            if length_header is not None and _length(length_header) > limit:
                raise _too_large(limit)
            body = await _read(receive, limit)
            if body is None:
                return  # the client went away
            refuse.close = False  # read whole: the connection may stay open
            problem = body_problem(body)
            if problem is not None:
                raise ProblemError(
                    400, "Bad request", f"body: {problem}", errors=[("body", problem)]
                )
        except ProblemError as exc:
            await refuse(exc)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _authenticate(self, scope: Scope, headers: Headers) -> None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ProblemError(
                401, "Unauthorized", "send `Authorization: Bearer <token>`", headers=_CHALLENGE
            )
        info = await authenticate(self.api.store.pool, token.strip())
        if info is None:
            raise ProblemError(
                401, "Unauthorized", "the token is unknown or revoked", headers=_CHALLENGE
            )
        scope.setdefault("state", {})[STATE_KEY] = info


class _Refusal:
    def __init__(self, scope: Scope, receive: Receive, send: Send, *, close: bool) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.close = close

    async def __call__(self, exc: ProblemError) -> None:
        headers = {**(exc.headers or {}), **(_CLOSE if self.close else {})}
        response = problem_response(
            exc.status, exc.title, exc.detail, kind=exc.kind, errors=exc.errors, headers=headers
        )
        await response(self.scope, self.receive, self.send)


def _needs_token(path: str) -> bool:
    return (path == "/api/v1" or path.startswith("/api/v1/")) and path not in PUBLIC


def _check_content_type(value: str | None) -> None:
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if not _JSON_TYPE.match(media_type):
        message = "must be application/json" + (" (it is missing)" if value is None else "")
        raise ProblemError(
            415,
            "Unsupported media type",
            f"Content-Type: {message}",
            errors=[("Content-Type", message)],
        )


def _length(value: str) -> int:
    # The HTTP server has already refused a malformed Content-Length; this is
    # for an ASGI server that does not.
    try:
        return int(value)
    except ValueError:
        raise ProblemError(
            400,
            "Bad request",
            "Content-Length: must be a number",
            errors=[("Content-Length", "must be a number")],
        ) from None


def _too_large(limit: int) -> ProblemError:
    message = f"is larger than the limit of {limit} bytes"
    return ProblemError(
        413, "Request body too large", f"body: {message}", errors=[("body", message)]
    )


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None if the client disconnected; 413 past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()  # what comes after the body: a disconnect

    return replayed
