"""Fuzz: the real daemon under a bounded flood of garbage over MQTT and CoAP.

One ``gateway run`` (MQTT adapter on the json, value, senml and zigbee2mqtt formats of a
real mosquitto, CoAP adapter, control API, no uplink) takes 10,000 garbage MQTT
messages and 2,000 garbage CoAP datagrams (``tests/garbage.py``, fixed seed) spread
over about 30 s. The module's fixture does all of it once, and what the daemon did is
checked by one test per property:

- it is alive, ``/healthz`` answers ``ok``, no adapter was restarted, no traceback;
- valid readings from a device over MQTT and over CoAP are accepted after the flood;
- the poison SenML pack (its time overflows to infinity) is counted as malformed
  (``bad_time`` where it is decoded, or ``ts_not_finite`` where readings are checked)
  and never stored; nothing in the outbox has a non-finite number;
- log lines stay within what the input-log contract allows (≤ 1 a minute per source
  and reason, sources past 1,000 sharing one line), a bound far below one line per
  bad message;
- resident memory grows by at most :data:`RSS_GROWTH_MAX_MIB` (the budget is 15 MB;
  ``tests/bench/bench_fuzz.py`` measures the real figure).

Replay a failure with the same :data:`SEED`; ``FUZZ_SEED=<n>`` tries another one.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.brokers import Mosquitto
from tests.coap_helpers import udp_port
from tests.daemon import GatewayProcess
from tests.garbage import (
    POISON_SENML,
    TOPICS,
    FloodReport,
    api_get,
    coap_post,
    daemon_config,
    flood,
    log_part,
    publish_one,
    rss_mib,
    samples,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("FUZZ_SEED", "20260601"))
MQTT_MESSAGES, COAP_DATAGRAMS, FLOOD_SECONDS = 10_000, 2_000, 30.0
#: the budget is 15 MB for this flood; the slack is for slower machines
RSS_GROWTH_MAX_MIB = 25.0
#: the device that proves valid readings still get in after the flood
VALID = "fz-valid"
#: the device the exact poison pack is published for, on the senml topic
POISON = "fz-poison"
#: InputLog tracks this many (source, reason) keys; past that, sources share one line
INPUT_LOG_KEYS = 1000
#: reasons a log line may be keyed by, at most, per log (generous: the exact sets are the
#: adapters' business): mqtt decode reasons, reading-check reasons, CoAP problems
REASONS = {"mqtt": 12, "readings": 12, "coap": 40}


@dataclass
class Fuzzed:
    """What the flood did to the daemon, recorded once for the module's tests."""

    report: FloodReport
    poison_published: int
    rss_before: float
    rss_after: float
    #: log lines written from the start of the flood until the daemon was quiet again
    lines: list[str]
    #: seconds the counted log period lasted
    log_period: float
    alive: bool
    health: tuple[int, Any]
    exposition: str
    dead_letters: tuple[int, Any]
    #: seconds from the end of the flood to the valid reading in the registry (None: never)
    valid_mqtt_s: float | None
    valid_coap_s: float | None
    valid_coap_code: str
    log_text: str
    #: native ids of the CoAP devices in the registry after the flood
    coap_known: set[str] = field(default_factory=set)
    #: (device, metric, value, ts) of every reading in the outbox after stopping
    stored: list[tuple[str, str, Any, Any]] = field(default_factory=list)


def _seconds_after(t0: float, check: Callable[[], bool], within: float,
                   what: str) -> float | None:
    """Seconds from ``t0`` until ``check()`` held, or None if it did not within ``within``
    (recorded rather than raised: the test of that property fails, the others run)."""
    try:
        wait_until(check, within, what)
    except AssertionError:
        return None
    return time.monotonic() - t0


def _device_value(sock: str, device: str, metric: str) -> Any:
    status, body = asyncio.run(api_get(sock, f"/api/devices/{device}"))
    if status != 200 or not isinstance(body, dict):
        return None
    return (body.get("values") or {}).get(metric, {}).get("value")


def _activity(sock: str) -> float:
    """Everything the adapters have counted so far: unchanged for a while means quiet."""
    _, text = asyncio.run(api_get(sock, "/metrics"))
    assert isinstance(text, str)
    total = 0.0
    for name in ("gateway_mqtt_messages_total", "gateway_coap_requests_total",
                 "gateway_readings_received_total", "gateway_readings_malformed_total"):
        total += sum(samples(text, name).values())
    return total


def _wait_quiet(sock: str, within: float = 30.0, still: float = 1.0) -> None:
    """Until the daemon's counters stop moving for ``still`` seconds (bounded)."""
    last, since = _activity(sock), time.monotonic()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _activity(sock)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= still:
            return
    raise AssertionError(f"the daemon was still counting input {within} s after the flood")


def _reading(seq: int) -> bytes:
    return json.dumps({"seq": seq, "temperature": 21.5, "ts": time.time()}).encode()


async def _valid_after_flood(mqtt_port: int, coap_port: int) -> str:
    """The device's next readings over both protocols, sent together."""
    published, code = await asyncio.gather(
        publish_one(mqtt_port, TOPICS["json"].format(device=VALID), _reading(2), "fz-valid-2"),
        coap_post(coap_port, ("readings", VALID), _reading(2)))
    assert published, "the broker did not acknowledge the valid MQTT publish"
    return code


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    work = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(work / "mosquitto").start()
    coap_port = udp_port()
    state = work / "state"
    gw = GatewayProcess(work / "gw", daemon_config(str(state), broker.port, coap_port))
    try:
        gw.start()
        sock = str(state / "gateway.sock")
        # the valid device is known before the flood (invented ids may fill the registry)
        assert asyncio.run(publish_one(broker.port, TOPICS["json"].format(device=VALID),
                                       _reading(1), "fz-valid-1"))
        assert asyncio.run(coap_post(coap_port, ("readings", VALID), _reading(1))) == "2.04"
        wait_until(lambda: _device_value(sock, f"mqtt:{VALID}", "seq") == 1
                   and _device_value(sock, f"coap:{VALID}", "seq") == 1, 20,
                   "the valid device's first readings in the registry")
        # warm-up: every code path once (imports, first allocations), another seed
        asyncio.run(flood(SEED + 1000, broker.port, coap_port, 300, 100, 0,
                          client_id="fz-warm-up"))
        _wait_quiet(sock)
        rss_before = rss_mib(gw.pid)
        log_offset = len(gw.log_path.read_bytes())
        period_start = time.monotonic()

        assert asyncio.run(publish_one(broker.port, TOPICS["senml"].format(device=POISON),
                                       POISON_SENML, "fz-poison"))
        report = asyncio.run(flood(SEED, broker.port, coap_port, MQTT_MESSAGES,
                                   COAP_DATAGRAMS, FLOOD_SECONDS))
        flood_end = time.monotonic()
        code = asyncio.run(_valid_after_flood(broker.port, coap_port))
        valid_mqtt = _seconds_after(
            flood_end, lambda: _device_value(sock, f"mqtt:{VALID}", "seq") == 2, 30,
            "the valid MQTT reading after the flood")
        valid_coap = _seconds_after(
            flood_end, lambda: _device_value(sock, f"coap:{VALID}", "seq") == 2, 5,
            "the valid CoAP reading after the flood")
        _wait_quiet(sock)
        rss_after = rss_mib(gw.pid)
        log_period = time.monotonic() - period_start
        lines = gw.log_path.read_bytes()[log_offset:].decode(errors="replace").splitlines()
        alive = gw.proc is not None and gw.proc.poll() is None
        health = asyncio.run(api_get(sock, "/healthz"))
        exposition = asyncio.run(api_get(sock, "/metrics"))[1]
        assert isinstance(exposition, str)
        dead = asyncio.run(api_get(sock, "/api/outbox/dead-letters?limit=1000"))
        _, known = asyncio.run(api_get(sock, "/api/devices?adapter=coap&fields=id"))
        gw.stop()
        result = Fuzzed(report, 1 + report.kinds.get("mqtt:senml:poison", 0), rss_before,
                        rss_after, lines, log_period, alive, health, exposition, dead,
                        valid_mqtt, valid_coap, code, gw.log_text())
        assert isinstance(known, list)
        result.coap_known = {d["id"].split(":", 1)[1] for d in known}
        result.stored = asyncio.run(_stored(state / "outbox.db"))
        yield result
    finally:
        gw.stop()
        broker.stop()


async def _stored(db: Path) -> list[tuple[str, str, Any, Any]]:
    outbox = await Outbox.open(db, StoreConfig(), metrics=None)
    try:
        rows = await outbox.read_telemetry(0, 10_000_000)
        return [(r.device, r.metric, r.value, r.ts) for row in rows for r in row.readings]
    finally:
        await outbox.close()


# -- the daemon survived -------------------------------------------------------------------


def test_the_flood_was_sent(fuzzed: Fuzzed) -> None:
    r = fuzzed.report
    assert (r.mqtt_sent, r.coap_sent) == (MQTT_MESSAGES, COAP_DATAGRAMS)
    assert r.mqtt_unacked == 0, "the broker did not take every garbage publish"
    assert len(r.sources["mqtt"]) > 2000  # thousands of invented device ids
    assert r.kinds.get("mqtt:senml:poison", 0) > 0


def test_daemon_alive_and_healthy_after_the_flood(fuzzed: Fuzzed) -> None:
    assert fuzzed.alive
    status, body = fuzzed.health
    assert status == 200 and isinstance(body, dict), fuzzed.health
    assert body["status"] == "ok", body["problems"]
    assert {name: (a["state"], a["restarts"]) for name, a in body["adapters"].items()} == {
        "mqtt": ("running", 0), "coap": ("running", 0)}


def test_no_traceback_in_the_daemon_log(fuzzed: Fuzzed) -> None:
    text = fuzzed.log_text
    at = text.find("Traceback")
    assert at < 0, text[max(0, at - 500):at + 3000]
    errors = [x for x in fuzzed.lines if re.match(r"\S+ (ERROR|CRITICAL) ", x)]
    assert not errors, "\n".join(errors[:20])


# -- good input still gets in; bad input never gets stored ---------------------------------


def test_valid_readings_are_accepted_after_the_flood(fuzzed: Fuzzed) -> None:
    assert fuzzed.valid_coap_code == "2.04"
    assert fuzzed.valid_mqtt_s is not None, "the valid MQTT reading never reached the registry"
    assert fuzzed.valid_coap_s is not None, "the valid CoAP reading never reached the registry"
    seqs = sorted((d, v) for d, m, v, _ in fuzzed.stored
                  if d in (f"mqtt:{VALID}", f"coap:{VALID}") and m == "seq")
    assert seqs == [(f"coap:{VALID}", 1), (f"coap:{VALID}", 2),
                    (f"mqtt:{VALID}", 1), (f"mqtt:{VALID}", 2)]


def test_poison_senml_time_is_counted_malformed_and_never_stored(fuzzed: Fuzzed) -> None:
    malformed = samples(fuzzed.exposition, "gateway_readings_malformed_total")
    ts_not_finite = malformed.get((("adapter", "mqtt"), ("reason", "ts_not_finite")), 0.0)
    # the SenML decoder refuses bt + t past a finite number itself: counted per device
    undecodable = samples(fuzzed.exposition, "gateway_mqtt_malformed_total")
    bad_time = sum(n for labels, n in undecodable.items() if ("reason", "bad_time") in labels)
    # every poison pack (the flood's, at QoS 0 or 1, and the one for fz-poison) is one reading
    assert not [s for s in fuzzed.stored if s[0] == f"mqtt:{POISON}"]
    # refused where readings are checked; or, had it got as far as the outbox, set aside
    status, body = fuzzed.dead_letters
    dead_lettered = status == 200 and isinstance(body, dict) and any(
        f"mqtt:{POISON}" in json.dumps(d) for d in body.get("dead_letters", []))
    assert ts_not_finite + bad_time >= fuzzed.poison_published or dead_lettered, (
        malformed, bad_time, body)


def test_nothing_unstorable_reached_the_outbox(fuzzed: Fuzzed) -> None:
    def finite(x: Any) -> bool:
        return not isinstance(x, float) or math.isfinite(x)

    bad = [s for s in fuzzed.stored if not (finite(s[2]) and isinstance(s[3], (int, float))
                                            and math.isfinite(s[3]))]
    assert not bad, bad[:10]
    assert len(fuzzed.stored) > 4  # the valid readings and what the garbage had that fits


# -- the log stays readable ----------------------------------------------------------------

def _keys(sources: dict[str, int], reasons: int) -> int:
    """(source, reason) pairs a log can have seen: a source with n items, min(n, reasons)."""
    return sum(min(n, reasons) for n in sources.values())


def _bounds(f: Fuzzed) -> dict[str, int]:
    """Lines each part of the log may write in the counted period, by the input-log
    contract: each (source, reason) once a minute, the first 1,000 keys on their own
    line, then one line per reason for all other sources."""
    windows = int(f.log_period // 60) + 1
    mqtt, coap = f.report.sources["mqtt"], f.report.sources["coap"]
    # the poison device, and devices that SenML base names invent, are sources too
    extra = {POISON: 1, **{f"bn-{i}": 1 for i in range(20)}}

    def contract(sources: dict[str, int], reasons: int) -> int:
        return (min(_keys(sources, reasons), INPUT_LOG_KEYS) + reasons) * windows

    devices = len(mqtt) + len(coap) + len(extra)
    return {
        "mqtt_input": contract({**mqtt, **extra, "bridge": 1}, REASONS["mqtt"]),
        # the zigbee2mqtt device list: one topic, one line a minute
        "mqtt_bridge": windows,
        "readings_mqtt": contract({**mqtt, **extra}, REASONS["readings"]),
        "readings_coap": contract({**coap, **extra}, REASONS["readings"]),
        # the CoAP adapter keys its lines by device when the registry knows it, else by
        # the sender's address (all of this flood comes from 127.0.0.1)
        "coap": contract({**{d: n for d, n in coap.items() if d in f.coap_known}, "host": 1},
                         REASONS["coap"]),
        # the registry logs the first 20 new devices a minute, then one summary line
        "devices_new": 21 * windows,
        "devices_online": (min(devices, INPUT_LOG_KEYS) + 1) * windows,
        "devices_other": 2 * windows,  # "registry full", at most once a minute
        "other": 10,
        "continuation": 0,
    }


@pytest.mark.parametrize("part", [
    "mqtt_input",
    "mqtt_bridge",
    "readings_mqtt", "readings_coap", "coap", "devices_new", "devices_online",
    "devices_other", "other", "continuation"])
def test_log_lines_stay_within_the_input_log_contract(fuzzed: Fuzzed, part: str) -> None:
    counts = Counter(log_part(x) for x in fuzzed.lines)
    bounds = _bounds(fuzzed)
    lines = [x for x in fuzzed.lines if log_part(x) == part]
    assert counts[part] <= bounds[part], (
        f"{counts[part]} {part} lines (bound {bounds[part]}) in {fuzzed.log_period:.0f} s; "
        f"all parts {dict(counts)}; first lines:\n" + "\n".join(x[:300] for x in lines[:15]))


def test_the_log_bound_is_far_below_a_line_per_bad_message(fuzzed: Fuzzed) -> None:
    """The bound above means something: a daemon logging each bad message breaks it."""
    bounds = _bounds(fuzzed)
    r = fuzzed.report
    assert bounds["mqtt_input"] + bounds["readings_mqtt"] < r.mqtt_sent / 4
    assert bounds["coap"] < r.coap_sent / 2
    assert sum(bounds.values()) < (r.mqtt_sent + r.coap_sent) / 2
    assert len(fuzzed.lines) <= sum(bounds.values())


# -- memory --------------------------------------------------------------------------------

def test_memory_growth_is_bounded(fuzzed: Fuzzed) -> None:
    growth = fuzzed.rss_after - fuzzed.rss_before
    assert growth <= RSS_GROWTH_MAX_MIB, (
        f"RSS {fuzzed.rss_before:.1f} MiB before the flood, {fuzzed.rss_after:.1f} MiB after: "
        f"+{growth:.1f} MiB")
