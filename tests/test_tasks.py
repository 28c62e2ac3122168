"""gateway.core.tasks: the stop-path helpers every component's loop relies on."""

from __future__ import annotations

import asyncio

from gateway.core.tasks import cancel_and_wait, wait_event


async def test_wait_event_says_whether_the_event_came_within_the_time() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5.0) is True
    assert await wait_event(event, 0.0) is True  # already set: no wait at all


async def test_a_loop_cancelled_just_as_its_event_is_set_still_stops() -> None:
    """The race that ``asyncio.wait_for`` loses on Python 3.11: the event's waiter is
    woken and the task cancelled in the same turn. The loop must stop all the same."""
    for _ in range(20):  # bounded: each round stops at once or fails the deadline
        event = asyncio.Event()
        turns = 0

        async def loop(ev: asyncio.Event = event) -> None:
            nonlocal turns
            while True:
                await wait_event(ev, 1.0)
                ev.clear()
                turns += 1

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)  # the loop now waits on the event
        event.set()
        task.cancel()
        async with asyncio.timeout(5):
            await cancel_and_wait(task)
        assert task.cancelled()


async def test_a_fanout_sets_the_events_linked_to_it_and_only_while_linked() -> None:
    from gateway.core.tasks import Fanout

    cause, wake = Fanout(), asyncio.Event()
    cause.linked.append(wake)
    waiter = asyncio.ensure_future(wake.wait())
    cause.set()
    await asyncio.wait_for(waiter, 5)
    assert cause.is_set() and wake.is_set()
    cause.clear()
    wake.clear()
    cause.linked.remove(wake)
    cause.set()
    assert cause.is_set() and not wake.is_set()
