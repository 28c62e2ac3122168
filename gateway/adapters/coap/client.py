"""The gateway as a CoAP client: observing or polling declared devices, sending commands.

- Observe (RFC 7641): one registration per resource. A device that reboots forgets its
  observers and goes quiet, or answers a notification with RST (which ends the
  observation); either way the gateway registers again. A resource that answers without
  an Observe option does not support it: the gateway polls it with GET instead.
- Notifications carry the resource's current state; aiocoap merges notifications that
  arrive while the previous one is being stored, so the outbox gets the latest state.
  They go through the adapter base's ingest path with (device, path) as the source: a
  refused one is retried with the one backoff, in order, until accepted or the stop's
  deadline (then it is counted and logged as dropped: the device does not resend it).
- Commands: a PUT or POST to the resource configured for the action; the response code
  is the command's result. Bodies larger than the device's block size go block-wise
  (RFC 7959), e.g. firmware images.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Protocol

from aiocoap import Context, Message, error
from aiocoap.numbers.codes import Code

from gateway.adapters.coap import codec
from gateway.adapters.coap.config import DeviceSpec, ResourceSpec
from gateway.adapters.coap.metrics import CoapMetrics
from gateway.core.backoff import Backoff
from gateway.core.tasks import wait_event
from gateway.logs import InputLog
from gateway.payloads import DecodeError
from gateway.reading import Command, CommandResult, Reading


class Accept(Protocol):
    """The adapter's ingest path (:meth:`Adapter.accept`): retried until accepted, in order
    per ``source``; False only when stopping."""

    def __call__(self, readings: Sequence[Reading], source: Hashable = ...,
                 retry_for: float = ..., on_refused: Callable[[], None] | None = ...,
                 ) -> Awaitable[bool]: ...


#: content format of command bodies read from files (application/octet-stream)
OCTET_STREAM = 42
#: seconds to wait for the first response of an observation or a poll
REQUEST_TIMEOUT = 30.0


def size_exponent(block_size: int) -> int:
    """RFC 7959 SZX of a block size (16 → 0 ... 1024 → 6)."""
    return int(math.log2(block_size)) - 4


class DeviceClient:
    """Requests to one declared device: observation loops and commands."""

    def __init__(self, adapter: str, spec: DeviceSpec, context: Context, accept: Accept,
                 block_size: int, files_dir: Path, metrics: CoapMetrics,
                 log: logging.Logger, input_log: InputLog | None = None) -> None:
        self.adapter = adapter
        self.spec = spec
        self.device = f"{adapter}:{spec.id}"
        self._context = context
        self._accept = accept
        self._szx = size_exponent(spec.block_size or block_size)
        self._files = files_dir
        self._m = metrics
        self._log = log
        self._input_log = input_log or InputLog(log)

    def _request(self, code: Code, path: str, **kw: Any) -> Message:
        msg = Message(code=code, uri=self.spec.address + path, **kw)
        # small devices take small blocks; aiocoap splits larger bodies accordingly
        msg.remote.maximum_block_size_exp = self._szx
        return msg

    # -- readings from the device --------------------------------------------------------------

    async def _store(self, res: ResourceSpec, response: Message, stopping: asyncio.Event) -> None:
        if not response.code.is_successful():
            self._m.notifications.labels(self.adapter, "error_code").inc()
            self._log.warning("coap: %s%s answered %s", self.spec.address, res.path,
                              response.code)
            return
        fmt = response.opt.content_format
        fmt_n = int(fmt) if fmt is not None else (codec.TEXT if res.metric else codec.JSON)
        try:
            readings = codec.decode(fmt_n, response.payload, self.device, time.time(),
                                    metric=res.metric, unit=res.unit)
        except DecodeError as exc:
            self._m.notifications.labels(self.adapter, "malformed").inc()
            self._m.malformed.labels(self.adapter, exc.reason).inc()
            self._input_log.warning(self.device, exc.reason, "coap: bad payload from %s%s "
                                    "(%s): %.200s", self.spec.address, res.path, exc.reason,
                                    exc)
            return
        # the device will not send this state again: the ingest path holds it (retried
        # with the one backoff, later notifications of the resource behind it) until the
        # outbox takes it, or until the stop's deadline
        refused = accepted = False

        def on_refused() -> None:
            nonlocal refused
            refused = True
            self._m.notifications.labels(self.adapter, "refused").inc()

        try:
            accepted = await self._accept(readings, (self.device, res.path),
                                          on_refused=on_refused)
        finally:
            if not accepted:
                # stopping (or cancelled at stop) with the outbox still refusing: the device
                # will not resend this state, so say what is lost rather than drop it quietly
                self._m.notifications.labels(self.adapter, "dropped").inc()
                self._log.warning("coap: stopping while the outbox %s: %d reading(s) "
                                  "observed from %s%s dropped",
                                  "refuses" if refused else "is busy", len(readings),
                                  self.spec.address, res.path)
        if accepted:
            self._m.notifications.labels(self.adapter, "accepted").inc()

    async def watch(self, res: ResourceSpec, stopping: asyncio.Event) -> None:
        """Observe ``res`` (registering again as needed) or poll it, until ``stopping``."""
        backoff = Backoff(1.0, min(60.0, res.quiet_after))
        observe = res.observe
        while not stopping.is_set():
            try:
                if observe:
                    observe = await self._observe_once(res, stopping)
                    backoff.reset()
                    continue
                await self._poll_once(res, stopping)
                backoff.reset()
                delay = res.poll_interval
            except (error.Error, OSError, TimeoutError) as exc:
                delay = backoff.next_delay()
                self._log.warning("coap: %s%s unreachable (%s: %s); trying again in %.1f s",
                                  self.spec.address, res.path, type(exc).__name__, exc, delay)
            await wait_event(stopping, delay)

    async def _poll_once(self, res: ResourceSpec, stopping: asyncio.Event) -> None:
        req = self._context.request(self._request(Code.GET, res.path))
        response = await asyncio.wait_for(req.response, REQUEST_TIMEOUT)
        await self._store(res, response, stopping)

    async def _observe_once(self, res: ResourceSpec, stopping: asyncio.Event) -> bool:
        """One observation, until it ends or goes quiet; False if the resource cannot."""
        req = self._context.request(self._request(Code.GET, res.path, observe=0))
        try:
            first = await asyncio.wait_for(req.response, REQUEST_TIMEOUT)
            self._m.registrations.labels(self.adapter).inc()
            await self._store(res, first, stopping)
            if first.opt.observe is None:
                if first.code.is_successful():
                    self._log.info("coap: %s%s does not support observe; polling every %.0f s",
                                   self.spec.address, res.path, res.poll_interval)
                    return False
                raise error.NotObservable(f"answered {first.code}")
            notifications = _iterate(req.observation)
            while not stopping.is_set():
                try:
                    notification = await asyncio.wait_for(anext(notifications), res.quiet_after)
                except StopAsyncIteration:
                    self._log.info("coap: observation of %s%s ended; registering again",
                                   self.spec.address, res.path)
                    return True
                except TimeoutError:
                    self._log.info("coap: %s%s quiet for %.0f s; registering again",
                                   self.spec.address, res.path, res.quiet_after)
                    return True
                await self._store(res, notification, stopping)
            return True
        finally:
            if not req.observation.cancelled:
                req.observation.cancel()

    # -- commands ------------------------------------------------------------------------------

    def _body(self, command: Command, fmt: str, fixed: str | None) -> tuple[int, bytes]:
        if fixed is not None:
            return (codec.TEXT if fmt == "text" else codec.FORMAT_NUMBERS[fmt]), fixed.encode()
        if fmt == "file":
            name = str(command.params.get("file", ""))
            path = (self._files / name).resolve()
            # commands may come from the cloud: only files put in the adapter's folder go out
            if not name or "/" in name or name.startswith(".") or path.parent != \
                    self._files.resolve():
                raise ValueError(f"param 'file' must name a file in {self._files}")
            return OCTET_STREAM, path.read_bytes()
        return codec.encode(fmt, command.params)

    async def send(self, command: Command) -> CommandResult:
        """PUT/POST the command to its resource; the response code is the result."""
        spec = self.spec.commands.get(command.action)
        if spec is None:
            known = ", ".join(sorted(self.spec.commands)) or "none configured"
            return CommandResult.unsupported(f"{self.device} has no action "
                                             f"{command.action!r} (known: {known})")
        try:
            fmt_n, payload = self._body(command, spec.format, spec.payload)
        except (ValueError, OSError) as exc:
            return CommandResult.refused(str(exc))
        code = Code.PUT if spec.method == "PUT" else Code.POST
        msg = self._request(code, spec.path, payload=payload, content_format=fmt_n)
        try:
            response = await asyncio.wait_for(self._context.request(msg).response, spec.timeout)
        except TimeoutError:
            self._m.commands.labels(self.adapter, "timeout").inc()
            return CommandResult.timeout(f"no response from {self.spec.address} within "
                                         f"{spec.timeout:.0f} s")
        except error.Error as exc:
            self._m.commands.labels(self.adapter, "error").inc()
            return CommandResult.error(f"{type(exc).__name__}: {exc}")
        detail = f"{response.code.dotted} {response.code.name}"
        text = response.payload[:200].decode("utf-8", "replace")
        if text and response.code.is_successful() is False:
            detail += f": {text}"
        if response.code.is_successful():
            self._m.commands.labels(self.adapter, "delivered").inc()
            return CommandResult.delivered(detail)
        if response.code.class_ == 4:
            self._m.commands.labels(self.adapter, "refused").inc()
            return CommandResult.refused(detail)
        self._m.commands.labels(self.adapter, "error").inc()
        return CommandResult.error(detail)


async def _iterate(observation: Any) -> AsyncIterator[Message]:
    async for notification in observation:
        yield notification
