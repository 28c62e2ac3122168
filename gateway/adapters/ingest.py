"""The one way adapters hand readings to the core: counted, retried, in order, drained.

Every adapter calls :meth:`Ingest.push` (as ``self.accept(...)`` on :class:`Adapter`):

- **Counted**: batches being accepted are counted, so :meth:`Ingest.drain` can wait for
  them at stop, by the deadline the supervisor gives (:meth:`Ingest.begin_stop`, its
  :data:`STOP_TIMEOUT` less :data:`STOP_MARGIN`; :data:`DRAIN_TIMEOUT` when an adapter
  is stopped without a supervisor).
- **Retried with one policy**: a refused batch (outbox full or failing) is offered again
  after :data:`RETRY_INITIAL` s, doubling (jittered) to :data:`RETRY_MAX` s, until it
  is accepted, until ``retry_for`` seconds passed (then False: the caller counts the
  loss, for devices that do not send again), or until the adapter stops (False: the
  device keeps the message). ``retry_for=0`` answers a refusal at once (CoAP's 5.03:
  the device retries).
- **In order per source**: every batch takes a ticket in arrival order. A refused batch
  of a source (a device, a stream, or the whole adapter) is retried only once every
  earlier batch of that source is done, and while one is held, later batches of the
  source wait their turn behind it: a later batch never overtakes an earlier one, even
  when the earlier one's refusal comes back after the later one's (a failed commit).
  For :data:`IN_LINE_AFTER_REFUSAL` s after a source's last refusal its batches keep
  going one at a time, in ticket order: batches overlapping at the sink while the store
  refuses on and off would let a later one be committed ahead of a refused earlier one.
- **Merged while waiting**: the batch whose turn it is takes the batches of its source
  waiting right behind it into the same sink call (up to :data:`MERGE_MAX` readings),
  so the backlog after an outage is cleared in a few large commits, not one per batch.

The fast path (nothing of the source held or in line) is a ticket, a counter and the
sink call.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from itertools import islice
from typing import Protocol

from gateway.core.backoff import Backoff
from gateway.core.tasks import wait_event
from gateway.reading import Reading

#: a refused batch is offered again after this (jittered), doubling up to the maximum
RETRY_INITIAL, RETRY_MAX = 0.05, 2.0
#: how long the supervisor waits for an adapter's stop() before giving up on it
STOP_TIMEOUT = 10.0
#: what the stop's last steps (disconnecting, closing files) keep of it after the drain
STOP_MARGIN = 2.0
#: how long stop() waits for batches being accepted: the supervisor gives this deadline
#: at stop (:meth:`Ingest.begin_stop`); also the default of an adapter stopped by itself
DRAIN_TIMEOUT = STOP_TIMEOUT - STOP_MARGIN
#: a source's line, and the whole adapter's when no source is named
WHOLE = "*"
#: after a source's last refusal, its batches go to the sink one at a time this long
IN_LINE_AFTER_REFUSAL = 5.0
#: readings per sink call at most when waiting batches of a source are merged
MERGE_MAX = 5000
#: sources remembered as refused lately before the expired ones are forgotten
_IN_LINE_SOURCES = 1024


class _Sink(Protocol):
    async def accept(self, readings: Sequence[Reading]) -> bool: ...


def retry_backoff() -> Backoff:
    """The backoff every retry of a refused batch follows."""
    return Backoff(RETRY_INITIAL, RETRY_MAX)


class _Waiting:
    """A batch in its source's line (refused, or behind one) until it is done."""

    __slots__ = ("readings", "turn", "on_refused", "refused")

    def __init__(self, readings: Sequence[Reading], on_refused: Callable[[], None] | None,
                 refused: bool) -> None:
        self.readings = readings
        #: set while it waits its turn: None (its turn, or stopping), True (accepted in
        #: the sink call of the batch before it)
        self.turn: asyncio.Future[bool | None] | None = None
        self.on_refused = on_refused
        self.refused = refused  # counted once, however often it is retried


class _Source:
    """The batches of one source in flight, by arrival ticket, and the held ones."""

    __slots__ = ("tickets", "held", "waiting")

    def __init__(self) -> None:
        self.tickets: deque[int] = deque()  # in flight, in arrival order
        self.held = 0  # batches in the line (refused, or behind one) and not yet done
        self.waiting: dict[int, _Waiting] = {}  # the batches in the line, by ticket


class Ingest:
    """One adapter's path into the sink; see the module docstring."""

    def __init__(self, sink: _Sink, drain_timeout: float = DRAIN_TIMEOUT,
                 in_line_after_refusal: float = IN_LINE_AFTER_REFUSAL,
                 merge_max: int = MERGE_MAX) -> None:
        self._sink = sink
        self.drain_timeout = drain_timeout
        self.in_line_after_refusal = in_line_after_refusal
        #: readings per merged sink call at most (0: batches are never merged)
        self.merge_max = merge_max
        #: sources refused lately: until when (monotonic) their batches stay in line
        self._in_line: dict[Hashable, float] = {}
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._sources: dict[Hashable, _Source] = {}
        self._ticket = 0
        #: when the stop's drain must end (monotonic), from the first begin_stop()
        self._deadline: float | None = None
        #: batches refused at least once, and batches given up after retry_for
        self.refusals = 0
        self.given_up = 0

    @property
    def busy(self) -> int:
        """Batches being accepted (or waiting in a line)."""
        return self._busy

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def held(self, source: Hashable = WHOLE) -> bool:
        """Whether ``source`` has batches waiting behind a refusal."""
        src = self._sources.get(source)
        return src is not None and src.held > 0

    def _lined(self, source: Hashable) -> bool:
        """Whether ``source`` was refused lately: its batches go one at a time."""
        until = self._in_line.get(source)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._in_line[source]
        return False

    def _line_up(self, source: Hashable) -> None:
        """``source`` was refused: its batches go one at a time for a while."""
        now = time.monotonic()
        if len(self._in_line) >= _IN_LINE_SOURCES:
            # many sources refused once and quiet since (devices that left): forget those
            self._in_line = {k: t for k, t in self._in_line.items() if t > now}
        self._in_line[source] = now + self.in_line_after_refusal

    async def push(self, readings: Sequence[Reading], source: Hashable = WHOLE,
                   retry_for: float = math.inf,
                   on_refused: Callable[[], None] | None = None) -> bool:
        """True once ``readings`` are durable; False if refused for good (see module doc).

        ``on_refused`` is called once, the first time the batch is refused (alone, or in
        a merged sink call).
        """
        self._busy += 1
        self._idle.clear()
        src = self._sources.get(source)
        if src is None:
            src = self._sources[source] = _Source()
        ticket = self._ticket
        self._ticket += 1
        src.tickets.append(ticket)
        try:
            if not src.held and not (self._in_line and self._lined(source)
                                     and not self._stopping.is_set()):
                if await self._sink.accept(readings):
                    return True
                self.refusals += 1
                self._line_up(source)
                if on_refused is not None:
                    on_refused()
                if retry_for <= 0 or self._stopping.is_set():
                    return False
                return await self._held(src, source, ticket,
                                        _Waiting(readings, on_refused, True), retry_for, True)
            return await self._held(src, source, ticket, _Waiting(readings, on_refused, False),
                                    retry_for, False)
        finally:
            self._done(src, source, ticket)
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    def _done(self, src: _Source, source: Hashable, ticket: int) -> None:
        tickets = src.tickets
        if tickets[0] == ticket:
            tickets.popleft()
        else:
            tickets.remove(ticket)
        if tickets:
            waiting = src.waiting.get(tickets[0])
            turn = waiting.turn if waiting is not None else None
            if turn is not None and not turn.done():
                turn.set_result(None)  # the next held batch's turn
        else:
            del self._sources[source]

    async def _held(self, src: _Source, source: Hashable, ticket: int, me: _Waiting,
                    retry_for: float, tried: bool) -> bool:
        deadline = time.monotonic() + retry_for
        src.held += 1
        src.waiting[ticket] = me
        try:
            # every earlier batch of the source first: accepted, or given up
            while src.tickets[0] != ticket:
                if self._stopping.is_set():
                    return False
                turn = me.turn = asyncio.get_running_loop().create_future()
                try:
                    if await turn:
                        return True  # merged into the batch before it, and accepted
                finally:
                    me.turn = None
            # a batch that waited its turn tries at once: the one before it just went
            if not tried and not self._stopping.is_set():
                if await self._offer(src, source, ticket, me):
                    return True
            backoff = retry_backoff()
            while not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    if retry_for > 0:
                        self.given_up += 1
                    return False
                if await wait_event(self._stopping, min(backoff.next_delay(), left)):
                    break  # stopping: the device keeps what was not accepted
                if await self._offer(src, source, ticket, me):
                    return True
            return False
        finally:
            src.held -= 1
            del src.waiting[ticket]

    async def _offer(self, src: _Source, source: Hashable, ticket: int, me: _Waiting) -> bool:
        """One sink call for the batch whose turn it is and those waiting right behind it."""
        group = [me]
        readings = me.readings
        if self.merge_max:
            total = len(readings)
            for later in islice(src.tickets, 1, None):
                waiting = src.waiting.get(later)
                if waiting is None or waiting.turn is None or waiting.turn.done():
                    break  # not waiting its turn (at the sink itself): the merge ends here
                total += len(waiting.readings)
                if total > self.merge_max:
                    break
                group.append(waiting)
            if len(group) > 1:
                readings = [r for w in group for r in w.readings]
        if await self._sink.accept(readings):
            for waiting in group[1:]:
                if waiting.turn is not None and not waiting.turn.done():
                    waiting.turn.set_result(True)
            return True
        self._line_up(source)
        for waiting in group:
            if not waiting.refused:
                waiting.refused = True
                self.refusals += 1
                if waiting.on_refused is not None:
                    waiting.on_refused()
        return False

    def begin_stop(self, within: float | None = None) -> None:
        """Start the stop's clock: every wait of the stop ends by one deadline, however
        many steps the adapter's stop takes (the supervisor's limit covers them all).

        The supervisor calls this with its deadline (``within`` seconds from now) before
        it calls the adapter's stop(); without one, :attr:`drain_timeout` from the first
        call. The first call sets the deadline; later ones keep it.
        """
        if self._deadline is None:
            self._deadline = time.monotonic() + (self.drain_timeout if within is None
                                                 else max(0.0, within))

    def remaining(self) -> float:
        """Seconds left of the stop's drain deadline (starting it if need be)."""
        self.begin_stop()
        assert self._deadline is not None
        return max(0.0, self._deadline - time.monotonic())

    def stop_retrying(self) -> None:
        """Held batches give up now (their devices keep them); new ones are tried once."""
        self.begin_stop()
        self._stopping.set()
        self._wake_waiting()

    def _wake_waiting(self) -> None:
        for src in self._sources.values():
            for waiting in src.waiting.values():
                if waiting.turn is not None and not waiting.turn.done():
                    waiting.turn.set_result(None)

    async def drain(self, within: float | None = None) -> int:
        """Wait (bounded) for batches being accepted, then stop retrying; how many are left.

        Retries go on while waiting (for devices that never send again, the drain is
        their last chance); call :meth:`stop_retrying` first where the device keeps its
        messages. Held batches still waiting at the deadline give up. New pushes after
        this are tried once, never retried. The wait ends by the stop's deadline
        (:meth:`begin_stop`), so several steps of one stop share the drain limit.
        """
        left = self.remaining() if within is None else within
        await wait_event(self._idle, left)
        self._stopping.set()
        self._wake_waiting()
        if self._busy:
            # held batches see the stop at their next wake-up: give them that turn
            await asyncio.sleep(0)
        return self._busy

    def reset(self) -> None:
        """Take batches again after a drain (an adapter started again)."""
        self._stopping.clear()
        self._deadline = None


