"""wait_for: the deadline-bound wait every test uses instead of sleeping."""

from __future__ import annotations

import asyncio

import pytest

from jobwire.testing import wait_for


async def test_returns_the_first_truthy_result() -> None:
    calls: list[int] = []

    def third_time_lucky() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) >= 3 else None

    assert await wait_for(third_time_lucky, timeout=2, interval=0.001) == [1, 1, 1]


async def test_awaits_async_predicates() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.02, event.set)

    async def is_set() -> bool:
        return event.is_set()

    assert await wait_for(is_set, timeout=2, interval=0.005) is True


async def test_timeout_names_what_it_waited_for_and_the_last_result() -> None:
    with pytest.raises(TimeoutError, match=r"after 0\.05 s waiting for the answer; last result: 0"):
        await wait_for(lambda: 0, timeout=0.05, interval=0.01, description="the answer")


async def test_ignored_errors_retry_and_are_chained_on_timeout() -> None:
    def refuse() -> bool:
        raise ConnectionRefusedError("down")

    with pytest.raises(TimeoutError, match="last error: ConnectionRefusedError") as failure:
        await wait_for(refuse, timeout=0.05, interval=0.01, ignore=(ConnectionRefusedError,))
    assert isinstance(failure.value.__cause__, ConnectionRefusedError)


async def test_other_errors_propagate_at_once() -> None:
    def broken() -> bool:
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        await wait_for(broken, timeout=5, ignore=(ConnectionError,))


async def test_a_hanging_predicate_is_cut_off_at_the_deadline() -> None:
    async def hang() -> bool:
        await asyncio.Event().wait()
        return True

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match=r"waiting for .*\.hang; last result: None"):
        await wait_for(hang, timeout=0.05)
    assert loop.time() - started < 1
