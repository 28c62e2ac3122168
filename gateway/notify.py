"""systemd service notifications (``Type=notify``, ``WatchdogSec=``) without libsystemd.

One datagram per message to ``$NOTIFY_SOCKET``: ``READY=1`` once started, ``WATCHDOG=1``
at half of ``$WATCHDOG_USEC`` from the event loop itself (a stalled loop stops the pings
and systemd restarts the service), ``STOPPING=1`` on shutdown. Outside systemd (no
``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("gateway.notify")


class Notifier:
    """Sends state changes to the service manager; does nothing when there is none."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket: its address starts with a NUL byte
        self.address: str | None = ("\0" + addr[1:] if addr.startswith("@") else addr) or None
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; False if nobody received it."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            # a lost notification must never stop the gateway; say so once, not per ping
            if not self._warned:
                log.warning("cannot notify the service manager at %s: %s",
                            self.address.replace("\0", "@"), exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """The daemon is up: systemd finishes ``start`` and starts dependent units."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        """Shutdown has begun (systemd then waits up to ``TimeoutStopSec``)."""
        return self.notify("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def start_watchdog(self) -> None:
        """Ping ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` from the running loop."""
        if self.address is None or self.watchdog_interval is None or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._ping(self.watchdog_interval),
                                                            name="watchdog")
        log.info("systemd watchdog: pinging every %.3g s", self.watchdog_interval)

    def start_status(self, describe: Callable[[], str], every: float = 30.0) -> None:
        """Refresh ``STATUS=`` (the line ``systemctl status`` shows) every ``every`` s."""
        if self.address is None or self._status_task is not None:
            return
        self._status_task = asyncio.get_running_loop().create_task(
            self._refresh_status(describe, every), name="notify-status")

    async def _refresh_status(self, describe: Callable[[], str], every: float) -> None:
        while True:
            try:
                self.status(describe())
            except Exception as exc:  # noqa: BLE001 - a status line is not worth a crash
                log.debug("status line failed: %s", exc)
            await asyncio.sleep(every)

    async def _ping(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop pinging and release the socket."""
        for task in (self._task, self._status_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._status_task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout, or None when no watchdog is armed for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    # a watchdog meant for another process (we were forked by it) is not ours to feed
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000
