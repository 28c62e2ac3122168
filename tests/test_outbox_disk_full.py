"""A full disk under the outbox, on a real small filesystem (tmpfs mounted by the test).

Mounting needs root (CAP_SYS_ADMIN); elsewhere these tests are skipped with the reason.
The filesystem is real: SQLite meets ENOSPC from the kernel, not a simulated error.
"""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.brokers import Mosquitto, free_port
from tests.cloud_sink import CloudSink
from tests.daemon import GatewayProcess
from tests.waiting import eventually


def _mount(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, timeout=10)
    return done.returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 5 MiB tmpfs for the state directory."""
    where = tmp_path / "state"
    if not _mount(where, "5m"):
        pytest.skip("needs root to mount a 5 MiB tmpfs (the full-disk tests use a real "
                    "filesystem)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def _fill(path: Path, leave: int) -> int:
    """Fill the filesystem of ``path`` until ``leave`` bytes are free; return bytes written."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    size = max(0, free - leave)
    with open(path, "wb") as f:
        f.write(b"\0" * size)
    return size


async def test_a_full_disk_refuses_then_resumes_when_space_returns(small_fs: Path) -> None:
    filler = small_fs / "filler"
    _fill(filler, 1536 * 1024)
    box = await Outbox.open(small_fs / "outbox.db", StoreConfig(commit_interval=0.02))
    accepted: dict[str, list[int]] = defaultdict(list)
    try:
        # devices that keep a refused message and send it again, in order (as MQTT does)
        seq = 0
        deadline = time.monotonic() + 60
        while not box.stats().disk_full:
            assert time.monotonic() < deadline, "the disk never filled"
            now = time.time()
            batch = [Reading(f"mqtt:d{i}", "seq", seq, None, now) for i in range(20)] + \
                [Reading(f"mqtt:d{i}", "note", "x" * 40, None, now) for i in range(20)]
            if await box.append(batch):
                for i in range(20):
                    accepted[f"mqtt:d{i}"].append(seq)
                seq += 1
        stats = box.stats()
        assert stats.bytes <= 5 * 1024**2
        # refused at once while full; nothing accepted is lost meanwhile
        assert not await box.append([Reading("mqtt:d0", "seq", seq, None, time.time())])
        filler.unlink()  # space returns
        freed = time.monotonic()
        await eventually(lambda: not box.stats().disk_full, 30, "ingest resuming", step=0.05)
        resumed = time.monotonic() - freed
        assert await box.append([Reading(f"mqtt:d{i}", "seq", seq, None, time.time())
                                 for i in range(20)])
        for i in range(20):
            accepted[f"mqtt:d{i}"].append(seq)
        got: dict[str, list[int]] = defaultdict(list)
        for row in await box.read_telemetry(0, 10**9):
            for r in row.readings:
                if r.metric == "seq":
                    got[r.device].append(int(r.value))
        for device, seqs in accepted.items():  # every accepted reading, once, in order
            assert got[device] == seqs, (device, sorted(set(seqs) ^ set(got[device])),
                                         len(seqs), len(got[device]))
        print(f"resumed {resumed:.2f} s after space returned; {seq} batches before")
    finally:
        await box.close()


class _Gate:
    """A loopback TCP relay to the cloud broker that the test opens: until then nothing
    listens on its port (the cloud is unreachable: connections are refused); open, it
    relays. The cloud-side subscriber is connected to the broker itself, before the
    gateway can be."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._server: _Relays | None = None

    def open(self) -> None:
        self._server = _Relays(("127.0.0.1", self.port), _Relay)
        self._server.target = self.target
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Relays(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    target = 0


class _Relay(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, _Relays)
        up = socket.create_connection(("127.0.0.1", server.target), timeout=10)
        up.settimeout(None)

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(up, self.request), daemon=True)
        back.start()
        pump(self.request, up)
        back.join(10)
        up.close()


def _config(state: Path, cloud_port: int, count: int) -> dict[str, object]:
    return {
        "gateway": {"id": "gw-full", "state_dir": str(state), "log_level": "info"},
        "uplink": {"host": "127.0.0.1", "port": cloud_port, "backoff_initial": 0.2,
                   "backoff_max": 1.0, "ack_timeout": 5},
        "api": {"enabled": False},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 20, "interval": 0.01,
                      "metrics": ["seq", "temperature", "humidity", "pressure",
                                  "illuminance", "power", "battery"], "count": count}],
    }


def test_the_daemon_on_a_full_disk_loses_nothing_keeps_order_and_resumes(
        small_fs: Path, tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        cloud_sink_factory: Callable[..., CloudSink],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    """Cloud down, disk full: refused, not crashed; cloud back: drained, resumed, all there."""
    cloud = mosquitto_factory(name="cloud")
    sink = cloud_sink_factory(cloud.port)
    gate = _Gate(cloud.port)
    count = 1500
    filler = small_fs / "filler"
    _fill(filler, 1024 * 1024)  # the state directory's disk has 1 MiB left
    try:
        gw = gateway_factory(_config(small_fs, gate.port, count)).start()
        gw.wait_for_log("is full: refusing new readings", timeout=120)
        full_at = time.monotonic()
        time.sleep(1.0)  # stays full for a while: the simulator is held, not the daemon
        assert gw.proc is not None and gw.proc.poll() is None
        errors_while_full = gw.log_text().count("ERROR")
        gate.open()  # the cloud is back
        back = time.monotonic()
        _drained_and_resumed(gw, sink, count, back, full_at, errors_while_full)
    finally:
        gate.close()


def _drained_and_resumed(gw: GatewayProcess, sink: CloudSink, count: int, back: float,
                         full_at: float, errors_while_full: int) -> None:
    gw.wait_for_log("room on disk again", timeout=60)
    resumed = time.monotonic() - back
    sink.wait_for(lambda: sum(1 for r in sink.readings() if r.metric == "seq") >= 20 * count,
                  timeout=120)
    assert gw.proc is not None and gw.proc.poll() is None
    by_device: dict[str, list[int]] = defaultdict(list)
    for r in sink.readings():
        if r.metric == "seq":
            by_device[r.device].append(int(r.value))
    assert len(by_device) == 20
    for device, seqs in by_device.items():
        first: list[int] = []
        seen: set[int] = set()
        for s in seqs:
            if s not in seen:
                seen.add(s)
                first.append(s)
        assert first == list(range(count)), device  # all, in order (repeats are resends)
    gw.stop()
    assert resumed < 30, f"ingest resumed {resumed:.1f} s after the cloud came back"
    # bounded logging: the errors of a full disk are a handful of lines, not one per commit
    assert errors_while_full <= 10
    print(f"full for {back - full_at:.1f} s; resumed {resumed:.1f} s after the cloud came back")
