"""A cloud-side subscriber for tests: records every message to a JSON-lines file.

Runs as its own process (``python -m tests.cloud_sink``) with a persistent MQTT 5
session, so messages published while it is away (the broker restarted with
persistence) still reach it. Stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gmqtt import Client

from gateway.reading import Reading
from gateway.uplink.formats import decode_json_batch
from tests.waiting import wait_until


async def _main(args: argparse.Namespace) -> None:
    import logging

    # no reconnect chatter while the broker is away
    logging.getLogger("gmqtt").setLevel(logging.CRITICAL)
    out = open(args.out, "a", buffering=1)  # noqa: SIM115, ASYNC230 - line-buffered, for readers
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        out.write(json.dumps({"topic": topic, "payload": payload.decode("utf-8", "replace"),
                              "t": time.time()}) + "\n")
        return 0

    client = Client(args.client_id, clean_session=False, session_expiry_interval=3600)
    client.on_message = on_message
    client.on_connect = lambda *a: client.subscribe(args.topic, qos=1)
    client.set_config({"reconnect_retries": -1, "reconnect_delay": 0.2})
    deadline = time.monotonic() + 20
    while True:
        try:
            await client.connect("127.0.0.1", args.port, keepalive=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    Path(args.out + ".ready").touch()  # noqa: ASYNC240 - once, at start
    await stop.wait()
    await client.disconnect()
    out.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", default="gateway/#")
    p.add_argument("--out", required=True)
    p.add_argument("--client-id", default="cloud-sink")
    asyncio.run(_main(p.parse_args()))


class CloudSink:
    """Handle on a running cloud_sink process."""

    def __init__(self, port: int, out: Path, topic: str = "gateway/#") -> None:
        self.out = Path(out)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cloud_sink", "--port", str(port), "--out",
             str(self.out), "--topic", topic, "--client-id", f"sink-{self.out.stem}"],
            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not Path(str(self.out) + ".ready").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("cloud sink did not start")
            time.sleep(0.05)

    def messages(self, suffix: str = "") -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        msgs = []
        for line in lines:
            try:
                msgs.append(json.loads(line))
            except ValueError:
                continue  # a line being written right now
        return [m for m in msgs if m["topic"].endswith(suffix)]

    def readings(self) -> list[Reading]:
        out: list[Reading] = []
        for m in self.messages("/telemetry"):
            out.extend(decode_json_batch(m["payload"]))
        return out

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        wait_until(predicate, timeout, "the cloud to receive what was expected", step=0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


if __name__ == "__main__":
    main()
