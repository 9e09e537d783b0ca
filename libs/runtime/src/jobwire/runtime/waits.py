"""Waiting that a stop request can interrupt: backoff between retries, and wake-ups."""

from __future__ import annotations

import asyncio


def retry_delay(base_seconds: float, attempt: int, cap_seconds: float) -> float:
    """Wait before the attempt after ``attempt``: base, 2·base, 4·base … at most ``cap``.

    The one backoff of jobwire's retries (runs, email, reconnects); pure, so domain code
    uses it too. Any attempt number is fine: the doubling stops long before a float overflows.
    """
    return float(min(base_seconds * 2.0 ** min(max(attempt - 1, 0), 64), cap_seconds))


class Stopped(Exception):
    """The service was asked to stop while waiting for a server."""


async def backoff_wait(delay: float, stop: asyncio.Event | None) -> None:
    """Wait ``delay`` seconds, or raise :class:`Stopped` as soon as ``stop`` is set."""
    if stop is None:
        await asyncio.sleep(delay)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return
    raise Stopped


async def wait_any(timeout: float, *events: asyncio.Event) -> None:
    """Return when one of ``events`` is set or ``timeout`` seconds have passed."""
    waiters = {asyncio.ensure_future(event.wait()) for event in events}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
