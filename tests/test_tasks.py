"""strata.tasks: stopping background tasks ends them even when a library swallowed a
cancellation (Python 3.11's ``asyncio.wait_for``, which redis-py uses, can)."""

from __future__ import annotations

import asyncio
import contextlib

from strata.tasks import raise_if_cancelled, stop_tasks


async def _swallows_one_cancel(swallowed: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        swallowed.set()  # as wait_for does when the awaited call completed meanwhile
    await asyncio.Event().wait()  # on as if nothing happened: a far-away next tick


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again_until_it_ends() -> None:
    swallowed = asyncio.Event()
    task = asyncio.create_task(_swallows_one_cancel(swallowed))
    await asyncio.sleep(0)  # running, waiting
    await stop_tasks([task], every=0.01)
    assert swallowed.is_set()
    assert task.cancelled()


async def test_a_task_that_ended_with_an_error_is_left_with_it() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop_tasks([task])
    assert isinstance(task.exception(), ValueError)


async def test_raise_if_cancelled_ends_a_loop_whose_cancellation_was_swallowed() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            with contextlib.suppress(asyncio.CancelledError):  # swallowed below us
                await asyncio.sleep(3600)
            raise_if_cancelled()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    assert rounds == 1
