"""Wait on a condition with a deadline: the only way tests should wait."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    *,
    description: str | None = ...,
    ignore: tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    *,
    description: str | None = ...,
    ignore: tuple[type[Exception], ...] = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    description: str | None = None,
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    ``predicate`` may be sync or async. Exceptions of the types in ``ignore``
    count as "not yet" (e.g. ``ConnectionRefusedError`` while a server comes
    back); any other exception propagates at once. A slow async predicate is
    cancelled at the deadline, so the whole call never outlives ``timeout``.

    Raises ``TimeoutError`` naming ``description`` (or the predicate) with the
    last result, chained to the last ignored exception if there was one.
    """
    what = description or getattr(predicate, "__qualname__", repr(predicate))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_result: object = None
    last_error: Exception | None = None
    while True:
        timer = asyncio.timeout_at(deadline)
        try:
            async with timer:
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
        except Exception as error:
            if timer.expired():
                break
            if not isinstance(error, ignore):
                raise
            last_error = error
        else:
            if result:
                return result
            last_result, last_error = result, None
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await asyncio.sleep(min(interval, remaining))
    detail = f"last error: {last_error!r}" if last_error else f"last result: {last_result!r}"
    raise TimeoutError(
        f"timed out after {timeout:g} s waiting for {what}; {detail}"
    ) from last_error
