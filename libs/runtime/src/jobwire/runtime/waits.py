"""Waiting that a stop request can interrupt: backoff between retries, and wake-ups."""

from __future__ import annotations

import asyncio


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
