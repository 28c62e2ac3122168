"""The adapter base's ingest path (gateway/adapters/ingest.py), checked once here; the
compliance suite checks each adapter's use of it.

The sink is the compliance suite's GateSink: it refuses or holds on command, as a full
or slow outbox does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from gateway.adapters.ingest import RETRY_INITIAL, Ingest
from gateway.reading import Reading
from tests.compliance import GateSink
from tests.waiting import eventually

T = 1_800_000_000.0


def batch(device: str, seq: int) -> list[Reading]:
    return [Reading(device, "seq", seq, None, T + seq)]


def seqs(sink: GateSink, device: str) -> list[int]:
    return [int(r.value) for r in sink.accepted if r.device == device]


async def test_accepted_at_once_costs_one_sink_call() -> None:
    sink = GateSink()
    ingest = Ingest(sink)
    assert await ingest.push(batch("a:1", 1))
    assert len(sink.calls) == 1 and ingest.busy == 0 and ingest.refusals == 0


async def test_a_refused_batch_is_retried_and_later_ones_of_its_source_wait_behind_it() -> None:
    sink = GateSink()
    ingest = Ingest(sink)
    sink.refusing = True
    first = asyncio.create_task(ingest.push(batch("a:1", 1), source="a:1"))
    await eventually(lambda: ingest.held("a:1"), 5, "the source held")
    later = [asyncio.create_task(ingest.push(batch("a:1", s), source="a:1")) for s in (2, 3)]
    other = asyncio.create_task(ingest.push(batch("b:1", 1), source="b:1"))
    await eventually(lambda: len(sink.calls) >= 4, 5, "retries of the held batch")
    # the later batches of a:1 were never offered while its first one was held
    assert {int(c[0].value) for c in sink.calls if c[0].device == "a:1"} == {1}
    sink.refusing = False
    assert await first and all(await asyncio.gather(*later)) and await other
    assert seqs(sink, "a:1") == [1, 2, 3]
    assert not ingest.held("a:1") and ingest.busy == 0


async def test_retry_for_bounds_the_retries_and_zero_answers_at_once() -> None:
    sink = GateSink()
    ingest = Ingest(sink)
    sink.refusing = True
    t0 = time.monotonic()
    assert not await ingest.push(batch("a:1", 1), retry_for=0)
    assert len(sink.calls) == 1  # one try: the device sends it again itself
    assert not await ingest.push(batch("a:1", 2), retry_for=0.3)
    assert time.monotonic() - t0 >= 0.3 and ingest.given_up == 1
    assert len(sink.calls) >= 3  # tried, and retried after RETRY_INITIAL and more
    assert RETRY_INITIAL < 0.3


async def test_stop_retrying_releases_held_batches_and_drain_waits_for_the_ones_at_the_sink(
        ) -> None:
    sink = GateSink()
    ingest = Ingest(sink, drain_timeout=5.0)
    sink.refusing = True
    held = asyncio.create_task(ingest.push(batch("a:1", 1)))
    await eventually(lambda: len(sink.calls) >= 2, 5, "a retry")
    ingest.stop_retrying()
    assert not await asyncio.wait_for(held, 5)  # the device keeps it
    # a batch whose accept is under way is waited for, within the deadline
    sink.refusing = False
    sink.gate.clear()
    slow = asyncio.create_task(ingest.push(batch("a:1", 2)))
    await eventually(lambda: ingest.busy == 1, 5, "the batch at the sink")
    asyncio.get_running_loop().call_later(0.2, sink.gate.set)
    assert await ingest.drain() == 0
    assert await slow and seqs(sink, "a:1") == [2]


async def test_drain_gives_up_at_its_deadline_when_accept_never_returns() -> None:
    sink = GateSink()
    ingest = Ingest(sink, drain_timeout=0.2)
    sink.gate.clear()  # the store hangs
    stuck = asyncio.create_task(ingest.push(batch("a:1", 1)))
    await eventually(lambda: ingest.busy == 1, 5, "the batch at the sink")
    t0 = time.monotonic()
    assert await ingest.drain() == 1
    assert time.monotonic() - t0 < 2.0
    stuck.cancel()


async def test_the_steps_of_one_stop_share_one_drain_deadline() -> None:
    sink = GateSink()
    ingest = Ingest(sink, drain_timeout=0.4)
    sink.gate.clear()  # the store hangs
    stuck = asyncio.create_task(ingest.push(batch("a:1", 1)))
    await eventually(lambda: ingest.busy == 1, 5, "the batch at the sink")
    t0 = time.monotonic()
    ingest.stop_retrying()  # the stop begins: its clock starts
    await asyncio.sleep(0.3)  # an adapter's own step of the stop (its source, its radio)
    assert 0.0 < ingest.remaining() <= 0.1 + 0.05
    assert await ingest.drain() == 1
    assert await ingest.drain() == 1  # a second drain of the same stop waits no more
    assert time.monotonic() - t0 < 0.4 + 0.3
    stuck.cancel()


class LateRefusal:
    """A sink whose first batch is refused late (a failed commit), while the ones after it
    are refused at once (the outbox full by then); then everything is accepted."""

    def __init__(self) -> None:
        self.first_answer = asyncio.Event()
        self.refusing = True
        self.calls = 0
        self.accepted: list[int] = []

    async def accept(self, readings: Sequence[Reading]) -> bool:
        self.calls += 1
        if self.calls == 1:
            await self.first_answer.wait()
            return False
        if self.refusing:
            return False
        self.accepted.extend(int(r.value) for r in readings)
        return True


async def test_a_later_batch_refused_first_still_waits_for_the_earlier_one() -> None:
    sink = LateRefusal()
    ingest = Ingest(sink)
    first = asyncio.create_task(ingest.push(batch("a:1", 1)))
    await eventually(lambda: sink.calls == 1, 5, "the first batch at the sink")
    second = asyncio.create_task(ingest.push(batch("a:1", 2)))
    await eventually(lambda: ingest.held(), 5, "the second batch refused and held")
    sink.refusing = False  # room again: the second one must not go ahead of the first
    await asyncio.sleep(0.3)  # retries of the second would have happened by now
    assert sink.accepted == []
    sink.first_answer.set()  # the first one's refusal comes back
    assert await first and await second
    assert sink.accepted == [1, 2]


async def test_batches_waiting_behind_a_held_one_go_with_it_in_one_sink_call() -> None:
    # the backlog after an outage: one large commit, not one per waiting batch
    sink = GateSink()
    ingest = Ingest(sink, merge_max=8)
    sink.refusing = True
    refused: list[int] = []
    pushes = [asyncio.create_task(ingest.push(batch("a:1", 1), source="a",
                                              on_refused=lambda: refused.append(1)))]
    await eventually(lambda: ingest.held("a"), 5, "the source held")
    for s in range(2, 11):
        pushes.append(asyncio.create_task(ingest.push(
            batch("a:1", s), source="a", on_refused=lambda s=s: refused.append(s))))
    await eventually(lambda: len(sink.calls) >= 3, 5, "merged retries refused")
    sink.refusing = False
    assert all(await asyncio.gather(*pushes))
    assert seqs(sink, "a:1") == list(range(1, 11))
    # each batch counted as refused once, however many merged retries it was part of
    # (9 and 10 did not fit in the merged call: never offered while the store refused)
    assert sorted(refused) == list(range(1, 9)) and ingest.refusals == 8
    # the accepted calls: the first eight batches together (merge_max), then the rest
    accepted_calls = [[int(r.value) for r in c] for c in sink.calls[-2:]]
    assert accepted_calls == [list(range(1, 9)), [9, 10]]
    assert ingest.busy == 0 and not ingest.held("a")


async def test_after_a_refusal_a_source_goes_one_batch_at_a_time_for_a_while() -> None:
    # a store refusing on and off: batches of a source overlapping at the sink could see
    # a later one committed while an earlier one is refused, so after a refusal they go
    # in line, one at a time, in arrival order
    sink = GateSink()
    ingest = Ingest(sink, in_line_after_refusal=30.0)
    sink.refusing = True
    first = asyncio.create_task(ingest.push(batch("a:1", 1), source="a"))
    await eventually(lambda: ingest.held("a"), 5, "the source held")
    sink.refusing = False
    assert await first and not ingest.held("a")
    sink.gate.clear()  # the store is slow: a batch stays at the sink
    calls = len(sink.calls)
    second = asyncio.create_task(ingest.push(batch("a:1", 2), source="a"))
    third = asyncio.create_task(ingest.push(batch("a:1", 3), source="a"))
    other = asyncio.create_task(ingest.push(batch("b:1", 1), source="b"))
    await eventually(lambda: len(sink.calls) >= calls + 2, 5, "batches at the sink")
    await asyncio.sleep(0.05)  # (a third call would come now if a:1 overlapped)
    at_sink = [(c[0].device, int(c[0].value)) for c in sink.calls[calls:]]
    assert at_sink == [("a:1", 2), ("b:1", 1)]  # a:1's third waits; b never refused
    sink.gate.set()
    assert await second and await third and await other
    assert seqs(sink, "a:1") == [1, 2, 3]
    # without a recent refusal, batches of a source overlap at the sink (the fast path)
    quick = Ingest(sink, in_line_after_refusal=0.0)
    sink.refusing = True
    assert not await quick.push(batch("c:1", 1), source="c", retry_for=0)
    sink.refusing = False
    sink.gate.clear()
    calls = len(sink.calls)
    both = [asyncio.create_task(quick.push(batch("c:1", s), source="c")) for s in (2, 3)]
    await eventually(lambda: len(sink.calls) == calls + 2, 5, "both batches at the sink")
    sink.gate.set()
    assert all(await asyncio.gather(*both))
