"""Dead letters through the control API and the CLI of a real daemon: an outbox file that
holds readings set aside as unstorable is opened by ``gateway run``, which lists them."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.api.client import ApiClient
from gateway.cli import main as cli
from gateway.reading import Reading
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.daemon import GatewayProcess


async def seed(path: Path) -> None:
    """Three poison readings (the core's checks bypassed) among good ones; bound of 2."""
    box = await Outbox.open(path, StoreConfig(commit_interval=0.005, dead_letter_max=2))
    try:
        now = time.time()
        oks = await asyncio.gather(
            box.append([Reading("coap:good", "seq", 1, None, now)]),
            *(box.append([Reading(f"mqtt:p{i}", "x", 1, None, math.inf)]) for i in range(3)))
        assert all(oks)
    finally:
        await box.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("deadletters")
    state = work / "state"
    state.mkdir()
    asyncio.run(seed(state / "outbox.db"))
    gw = GatewayProcess(work, {
        "gateway": {"id": "test-gw", "state_dir": str(state)},
        "uplink": {"enabled": False},
        "store": {"dead_letter_max": 2},
        "adapters": [{"type": "simulator", "name": "sim", "devices": 1, "interval": "1s",
                      "seed": 1}],
    })
    gw.start()
    yield gw
    gw.stop()


def api(gw: GatewayProcess) -> ApiClient:
    return ApiClient(Path(gw.config["gateway"]["state_dir"]) / "gateway.sock")


def test_outbox_status_counts_the_dead_letters(daemon: GatewayProcess) -> None:
    body = api(daemon).call("GET", "/api/outbox")
    assert body["dead_letters"] == 2 and body["dead_letters_deleted"] == 1


def test_dead_letters_route_lists_the_newest_with_reason_and_excerpt(
        daemon: GatewayProcess) -> None:
    body = api(daemon).call("GET", "/api/outbox/dead-letters?limit=1")
    assert (body["count"], body["deleted"], body["max"]) == (2, 1, 2)
    (letter,) = body["dead_letters"]
    assert letter["device"] == "mqtt:p2"
    assert letter["reason"] == "OverflowError: cannot convert float infinity to integer"
    assert letter["reading"] == "Reading(device='mqtt:p2', metric='x', value=1, unit=None, ts=inf)"
    assert letter["ts"] <= time.time() and isinstance(letter["id"], int)
    body = api(daemon).call("GET", "/api/outbox/dead-letters")
    assert [d["device"] for d in body["dead_letters"]] == ["mqtt:p2", "mqtt:p1"]
    for bad in ("0", "10001", "x", "-1", "%C2%B2"):  # the last: "²", a digit to str.isdigit
        code, answer = api(daemon).request("GET", f"/api/outbox/dead-letters?limit={bad}")
        assert code == 400 and "limit" in answer["error"]


def test_cli_shows_the_count_and_lists_the_dead_letters(
        daemon: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    sock = str(Path(daemon.config["gateway"]["state_dir"]) / "gateway.sock")
    capsys.readouterr()
    assert cli(["outbox", "--socket", sock]) == 0
    out = capsys.readouterr().out
    assert "set aside 2 reading(s) that cannot be stored, 1 older deleted" in out
    assert cli(["outbox", "--socket", sock, "--dead-letters", "--limit", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 reading(s) set aside as unstorable (at most 2 kept, 1 older deleted)"
    assert lines[1].endswith("  mqtt:p2  OverflowError: cannot convert float infinity to integer")
    assert lines[2].strip().startswith("Reading(device='mqtt:p2'")
    assert lines[3] == "(the latest 1; --limit N shows more)"
    assert cli(["outbox", "--socket", sock, "--dead-letters", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["dead_letters"]) == 2
