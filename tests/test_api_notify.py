"""systemd notifications: READY, WATCHDOG and STOPPING on a test NOTIFY_SOCKET."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.notify import Notifier
from tests.daemon import GatewayProcess
from tests.waiting import eventually, wait_until


class NotifyListener:
    """A unix datagram socket standing in for systemd; records (arrival time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, field: str, timeout: float = 20.0) -> float:
        """When ``field`` first arrived (monotonic)."""
        return wait_until(lambda: next(iter(self.times(field)), None), timeout,
                          f"{field} on the notify socket", step=0.01)

    def times(self, field: str) -> list[float]:
        return [t for t, msg in list(self.messages) if field in msg.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path / "notify.sock")
    yield lst
    lst.close()


def healthz(sock_path: Path) -> int:
    conn = http.client.HTTPConnection("gateway", timeout=5)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.connect(str(sock_path))
    conn.request("GET", "/healthz")
    status = conn.getresponse().status
    conn.close()
    return status


def test_daemon_sends_ready_then_watchdog_pings_then_stopping(
        tmp_path: Path, listener: NotifyListener) -> None:
    state = tmp_path / "state"
    gw = GatewayProcess(tmp_path / "gw", {
        "gateway": {"state_dir": str(state)},
        "uplink": {"enabled": False},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 2, "interval": "0.5s"}],
    }, env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "200000"})
    gw.start(wait_ready=0)
    try:
        listener.wait_for("READY=1")
        # READY means ready: the control API, started last, already answers
        assert healthz(state / "gateway.sock") == 200
        ready_at = listener.wait_for("READY=1")

        def pings_since_ready() -> list[float]:
            return [t for t in listener.times("WATCHDOG=1") if t > ready_at]

        # every 0.1 s (half of WATCHDOG_USEC)
        wait_until(lambda: len(pings_since_ready()) >= 5, 10, "five watchdog pings after READY")
        pings = pings_since_ready()
        # a busy test machine may delay the loop a little, never by many intervals
        assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 0.8
        assert not listener.times("STOPPING=1")
        os.kill(gw.pid, signal.SIGTERM)
        listener.wait_for("STOPPING=1", timeout=10)
        assert gw.proc is not None
        assert gw.proc.wait(30) == 0  # a clean exit after the one SIGTERM systemd sends
    finally:
        gw.stop()
    ready = [msg for _, msg in listener.messages if "READY=1" in msg]
    assert len(ready) == 1 and "STATUS=running 1 adapter(s)" in ready[0]
    # then the line systemctl status shows, refreshed from the daemon's health
    assert any(re.fullmatch(r"STATUS=ok: 1/1 adapter\(s\) running, uplink off, "
                            r"outbox \d+ reading\(s\), \d/2 device\(s\) online", msg)
               for _, msg in listener.messages), listener.messages


def test_daemon_outside_systemd_sends_nothing_and_runs(tmp_path: Path,
                                                        listener: NotifyListener) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    gw = GatewayProcess(tmp_path / "gw", {
        "gateway": {"state_dir": str(tmp_path / "state")}, "uplink": {"enabled": False},
    })
    gw.env = env
    gw.start()
    assert gw.stop() == 0
    assert listener.messages == []


async def test_watchdog_pings_stop_while_the_event_loop_is_stalled(
        listener: NotifyListener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval == pytest.approx(0.05)
    notifier.start_watchdog()
    try:
        await eventually(lambda: len(listener.times("WATCHDOG=1")) >= 3, 10,
                         "pings before the stall")
        stall_start = time.monotonic()
        time.sleep(0.6)  # noqa: ASYNC251 - block the loop on purpose: no pinger can run
        stall_end = time.monotonic()
        await eventually(lambda: len([t for t in listener.times("WATCHDOG=1")
                                      if t > stall_end]) >= 3, 10, "pings after the stall")
    finally:
        await notifier.close()
    pings = listener.times("WATCHDOG=1")
    assert len([t for t in pings if t < stall_start]) >= 3
    # the datagram of the ping due at the start of the stall may land just inside it
    during = [t for t in pings if stall_start + 0.06 < t < stall_end]
    assert during == []
    assert len([t for t in pings if t > stall_end]) >= 3


def test_watchdog_meant_for_another_process_is_ignored(listener: NotifyListener) -> None:
    other = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "100000",
                      "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval is None
    mine = Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "100000",
                     "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == pytest.approx(0.05)


def test_notifier_without_notify_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.stopping() is False
    assert notifier.watchdog_interval is None


def test_notifier_reaches_an_abstract_socket(tmp_path: Path) -> None:
    name = f"gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello") is True
        assert s.recv(100) == b"STATUS=hello"


def test_notifier_survives_a_vanished_manager(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False
    assert notifier.notify("WATCHDOG=1") is False
