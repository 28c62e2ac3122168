"""The shipped mosquitto queue holds what devices publish while the gateway is down.

mosquitto runs with the queue settings of ``deploy/mosquitto/gateway.conf``; a device
publishes 2,000 messages/s at QoS 1 (``mosquitto_pub``: each message is PUBACKed by the
broker, so the device considers it delivered); the gateway is stopped for 10 s in the
middle. Every message the broker acknowledged must end up in the outbox.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.brokers import Mosquitto
from tests.daemon import GatewayProcess

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "gateway.conf"
RATE, SECONDS, OUTAGE = 2000, 14.0, 10.0


def shipped_queue_settings() -> str:
    lines = [ln for ln in SHIPPED.read_text().splitlines()
             if re.match(r"^(max_queued_messages|max_queued_bytes|queue_qos0_messages)\b", ln)]
    assert lines, "the shipped config sets no queue bound"
    return "\n".join(lines)


def paced_publisher(broker: Mosquitto, total: int, rate: int
                    ) -> tuple[subprocess.Popen[bytes], threading.Thread]:
    """mosquitto_pub reading lines from a pipe fed at ``rate`` lines per second."""
    proc = subprocess.Popen(
        ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
         "-i", "device-pacer", "-t", "devices/pacer/telemetry", "-l"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def feed() -> None:
        assert proc.stdin is not None
        start = time.monotonic()
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            proc.stdin.write(b'{"seq": %d}\n' % i)
            if i % 50 == 0:
                proc.stdin.flush()
        proc.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    return proc, feeder


def stored_seqs(state: Path) -> set[int]:
    async def read() -> set[int]:
        box = await Outbox.open(state / "outbox.db", StoreConfig())
        try:
            out: set[int] = set()
            after = 0
            while rows := await box.read_telemetry(after, 50_000):
                out.update(int(r.value) for row in rows for r in row.readings
                           if r.metric == "seq")
                after = rows[-1].id
            return out
        finally:
            await box.close()
    return asyncio.run(read())


def outbox_depth(sock: Path) -> int:
    """Readings waiting in the outbox, from the control API (HTTP over its Unix socket)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(sock))
        conn.sendall(b"GET /api/outbox HTTP/1.0\r\nHost: gateway\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(json.loads(data.split(b"\r\n\r\n", 1)[1])["depth"])


@pytest.mark.slow
def test_every_acknowledged_message_survives_a_10s_gateway_outage_at_2000_per_second(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        gateway_factory: Callable[..., GatewayProcess]) -> None:
    broker = mosquitto_factory(name="devices", extra=shipped_queue_settings())
    state = tmp_path / "state"
    config = {
        "gateway": {"id": "gw-queue", "state_dir": str(state)},
        "uplink": {"enabled": False},
        "adapters": [{"type": "mqtt", "host": broker.host, "port": broker.port,
                      "client_id": "gw-queue-devices", "reconnect_delay": 0.2,
                      "subscriptions": [{"topic": "devices/{device}/telemetry"}]}],
    }
    gw = gateway_factory(config).start()
    total = int(RATE * SECONDS)
    pub, feeder = paced_publisher(broker, total, RATE)
    time.sleep(2.0)  # the gateway is taking messages as they come
    gw.stop()
    down_at = time.monotonic()
    while time.monotonic() - down_at < OUTAGE:
        time.sleep(0.1)  # the outage itself: devices keep publishing into the broker
    again = gateway_factory(config, name="gw2").start()
    feeder.join(SECONDS + 30)
    assert not feeder.is_alive(), "the publisher could not keep up with its pipe"
    assert pub.wait(60) == 0, pub.stderr.read().decode(errors="replace") if pub.stderr else ""
    # every message is PUBACKed by the broker now; the gateway drains the broker's queue
    deadline = time.monotonic() + 60
    while outbox_depth(state / "gateway.sock") < total:
        assert time.monotonic() < deadline, f"outbox depth {outbox_depth(state / 'gateway.sock')}" \
            f" of {total} after 60 s; broker log:\n{broker.log_text()[-2000:]}"
        time.sleep(0.2)
    again.stop()
    assert "Outgoing messages are being dropped" not in broker.log_text()
    seqs = stored_seqs(state)
    assert len(seqs) == total, f"{total - len(seqs)} acknowledged message(s) lost: " \
        f"first missing {min(set(range(total)) - seqs)}; broker log:\n{broker.log_text()[-2000:]}"
