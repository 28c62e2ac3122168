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

The fast path (nothing of the source held) is a ticket, a counter and the sink call.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Hashable, Sequence
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


class _Sink(Protocol):
    async def accept(self, readings: Sequence[Reading]) -> bool: ...


def retry_backoff() -> Backoff:
    """The backoff every retry of a refused batch follows."""
    return Backoff(RETRY_INITIAL, RETRY_MAX)


class _Source:
    """The batches of one source in flight, by arrival ticket, and the held ones."""

    __slots__ = ("tickets", "held", "turn")

    def __init__(self) -> None:
        self.tickets: deque[int] = deque()  # in flight, in arrival order
        self.held = 0  # batches refused and not yet done
        self.turn: dict[int, asyncio.Future[None]] = {}  # held batches waiting their turn


class Ingest:
    """One adapter's path into the sink; see the module docstring."""

    def __init__(self, sink: _Sink, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        self._sink = sink
        self.drain_timeout = drain_timeout
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

    async def push(self, readings: Sequence[Reading], source: Hashable = WHOLE,
                   retry_for: float = math.inf) -> bool:
        """True once ``readings`` are durable; False if refused for good (see module doc)."""
        self._busy += 1
        self._idle.clear()
        src = self._sources.get(source)
        if src is None:
            src = self._sources[source] = _Source()
        ticket = self._ticket
        self._ticket += 1
        src.tickets.append(ticket)
        try:
            if not src.held:
                if await self._sink.accept(readings):
                    return True
                self.refusals += 1
                if retry_for <= 0 or self._stopping.is_set():
                    return False
                return await self._held(src, ticket, readings, retry_for, tried=True)
            return await self._held(src, ticket, readings, retry_for, tried=False)
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
            waiter = src.turn.get(tickets[0])
            if waiter is not None and not waiter.done():
                waiter.set_result(None)  # the next held batch's turn
        else:
            del self._sources[source]

    async def _held(self, src: _Source, ticket: int, readings: Sequence[Reading],
                    retry_for: float, tried: bool) -> bool:
        deadline = time.monotonic() + retry_for
        src.held += 1
        try:
            # every earlier batch of the source first: accepted, or given up
            while src.tickets[0] != ticket:
                if self._stopping.is_set():
                    return False
                waiter = src.turn[ticket] = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    src.turn.pop(ticket, None)
            # a batch that waited its turn tries at once: the one before it just went
            if not tried and not self._stopping.is_set():
                if await self._sink.accept(readings):
                    return True
                self.refusals += 1
            backoff = retry_backoff()
            while not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    self.given_up += 1
                    return False
                if await wait_event(self._stopping, min(backoff.next_delay(), left)):
                    break  # stopping: the device keeps what was not accepted
                if await self._sink.accept(readings):
                    return True
            return False
        finally:
            src.held -= 1

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
            for waiter in src.turn.values():
                if not waiter.done():
                    waiter.set_result(None)

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


