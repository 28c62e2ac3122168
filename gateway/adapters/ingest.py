"""The one way adapters hand readings to the core: counted, retried, in order, drained.

Every adapter calls :meth:`Ingest.push` (as ``self.accept(...)`` on :class:`Adapter`):

- **Counted**: batches being accepted are counted, so :meth:`Ingest.drain` can wait for
  them at stop, by the deadline the supervisor gives (:data:`DRAIN_TIMEOUT`, below the
  supervisor's stop timeout).
- **Retried with one policy**: a refused batch (outbox full or failing) is offered again
  after :data:`RETRY_INITIAL` s, doubling (jittered) to :data:`RETRY_MAX` s, until it
  is accepted, until ``retry_for`` seconds passed (then False: the caller counts the
  loss, for devices that do not send again), or until the adapter stops (False: the
  device keeps the message). ``retry_for=0`` answers a refusal at once (CoAP's 5.03:
  the device retries).
- **In order per source**: a refusal opens a line for its source (a device, a stream,
  or the whole adapter); every later batch of that source waits behind the held one,
  so a later batch never overtakes it. The line closes once it is empty.

The fast path (no line for the source) is one counter and the sink call.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Hashable, Sequence
from typing import Protocol

from gateway.core.backoff import Backoff
from gateway.reading import Reading

#: a refused batch is offered again after this (jittered), doubling up to the maximum
RETRY_INITIAL, RETRY_MAX = 0.05, 2.0
#: how long stop() waits for batches being accepted; below the supervisor's stop timeout
#: (the compliance suite checks), and above a source's own waits (LoRaWAN's 5 s)
DRAIN_TIMEOUT = 8.0
#: a source's line, and the whole adapter's when no source is named
WHOLE = "*"


class _Sink(Protocol):
    async def accept(self, readings: Sequence[Reading]) -> bool: ...


def retry_backoff() -> Backoff:
    """The backoff every retry of a refused batch follows."""
    return Backoff(RETRY_INITIAL, RETRY_MAX)


class _Line:
    """Batches of one source waiting behind a refused one, in arrival order."""

    __slots__ = ("lock", "waiting")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: waiters are woken in the order they came
        self.waiting = 0


class Ingest:
    """One adapter's path into the sink; see the module docstring."""

    def __init__(self, sink: _Sink, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        self._sink = sink
        self.drain_timeout = drain_timeout
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._lines: dict[Hashable, _Line] = {}
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
        return source in self._lines

    async def push(self, readings: Sequence[Reading], source: Hashable = WHOLE,
                   retry_for: float = math.inf) -> bool:
        """True once ``readings`` are durable; False if refused for good (see module doc)."""
        self._busy += 1
        self._idle.clear()
        try:
            line = self._lines.get(source)
            if line is None:
                if await self._sink.accept(readings):
                    return True
                self.refusals += 1
                if retry_for <= 0 or self._stopping.is_set():
                    return False
                line = self._lines.get(source)
                if line is None:
                    line = self._lines[source] = _Line()
                return await self._in_line(line, source, readings, retry_for, refused=True)
            return await self._in_line(line, source, readings, retry_for, refused=False)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def _in_line(self, line: _Line, source: Hashable, readings: Sequence[Reading],
                       retry_for: float, refused: bool) -> bool:
        deadline = time.monotonic() + retry_for
        line.waiting += 1
        try:
            async with line.lock:
                # a batch that waited behind the held one tries at once: that one just went
                if not refused and not self._stopping.is_set():
                    if await self._sink.accept(readings):
                        return True
                    self.refusals += 1
                backoff = retry_backoff()
                while not self._stopping.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.given_up += 1
                        return False
                    try:
                        await asyncio.wait_for(self._stopping.wait(),
                                               min(backoff.next_delay(), left))
                        break  # stopping: the device keeps what was not accepted
                    except TimeoutError:
                        pass
                    if await self._sink.accept(readings):
                        return True
                return False
        finally:
            line.waiting -= 1
            if not line.waiting and self._lines.get(source) is line:
                del self._lines[source]

    def begin_stop(self) -> None:
        """Start the stop's clock: every wait of the stop ends by one deadline, however
        many steps the adapter's stop takes (the supervisor's limit covers them all)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.drain_timeout

    def remaining(self) -> float:
        """Seconds left of the stop's drain deadline (starting it if need be)."""
        self.begin_stop()
        assert self._deadline is not None
        return max(0.0, self._deadline - time.monotonic())

    def stop_retrying(self) -> None:
        """Held batches give up now (their devices keep them); new ones are tried once."""
        self.begin_stop()
        self._stopping.set()

    async def drain(self, within: float | None = None) -> int:
        """Wait (bounded) for batches being accepted, then stop retrying; how many are left.

        Retries go on while waiting (for devices that never send again, the drain is
        their last chance); call :meth:`stop_retrying` first where the device keeps its
        messages. Held batches still waiting at the deadline give up. New pushes after
        this are tried once, never retried. The wait ends by the stop's deadline
        (:meth:`begin_stop`), so several steps of one stop share the drain limit.
        """
        left = self.remaining() if within is None else within
        try:
            await asyncio.wait_for(self._idle.wait(), left)
        except TimeoutError:
            pass
        self._stopping.set()
        if self._busy:
            # held batches see the stop at their next wake-up: give them that turn
            await asyncio.sleep(0)
        return self._busy

    def reset(self) -> None:
        """Take batches again after a drain (an adapter started again)."""
        self._stopping.clear()


