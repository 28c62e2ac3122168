"""The ``webhook`` action against a real aiohttp server on 127.0.0.1: body, headers, retries.

Readings go through a real Pipeline and outbox into the engine (hand-advanced clock); the
receiving server is a real HTTP server whose answers the test scripts (503 first, then 200;
always 500; 404; too slow).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.core.pipeline import Pipeline
from gateway.rules.config import ActionSpec
from gateway.store.config import StoreConfig
from gateway.store.outbox import Outbox
from tests.brokers import free_port
from tests.test_rules_engine import Host, rule, start


@dataclass
class Receiver:
    """An HTTP endpoint that answers with the scripted statuses, then 200."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    got: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = self.answers.pop(0) if self.answers else 200
        self.got.append((status, body, dict(request.headers)))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=status, text="busy" if status >= 500 else "ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rx.url = f"http://127.0.0.1:{port}/hook"
    yield rx
    await runner.cleanup()


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    box = await Outbox.open(tmp_path / "outbox.db", StoreConfig(commit_interval=0.001))
    h = Host(box, Pipeline(box), CollectorRegistry())
    yield h
    if h.engine is not None:
        await h.engine.stop()
    await box.close()


def hook(url: str, **kw: Any) -> dict[str, Any]:
    return {"webhook": {"url": url, "backoff": "10ms", **kw}}


async def test_a_firing_posts_json_and_a_failed_first_try_is_retried(
        host: Host, receiver: Receiver) -> None:
    receiver.answers = [503]
    await start(host, [rule(name="hot", when="temperature > 30", actions=[hook(
        receiver.url, severity="critical", headers={"Authorization": "Bearer t0k3n"},
        message="{device} at {value} {unit}")], on_clear=[hook(receiver.url)])])
    await host.feed(host.r("temperature", 31.5, unit="Cel"))
    assert [status for status, _, _ in receiver.got] == [503, 200]
    _, body, headers = receiver.got[-1]
    assert headers["Authorization"] == "Bearer t0k3n"
    assert headers["Content-Type"].startswith("application/json")
    assert body["rule"] == "hot" and body["state"] == "firing" and body["device"] == "sim:a"
    assert body["value"] == 31.5 and body["unit"] == "Cel" and body["severity"] == "critical"
    assert body["message"] == "sim:a at 31.5 Cel"
    assert host.count("gateway_rule_actions_total", rule="hot", action="webhook") == 1
    await host.feed(host.r("temperature", 20.0, unit="Cel"))
    _, cleared, _ = receiver.got[-1]
    assert cleared["state"] == "cleared"
    assert cleared["message"] == "rule hot cleared on sim:a (temperature=20)"


async def test_retries_are_bounded_failures_counted_and_logged_once_a_minute(
        host: Host, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.answers = [500] * 100
    await start(host, [rule(name="hot", when="temperature > 30", actions=[
        hook(receiver.url, retries=2)])])
    caplog.set_level(logging.ERROR, "gateway.rules")
    for v in (31, 20, 32, 20, 33):
        await host.feed(host.r("temperature", v))
    assert len(receiver.got) == 9  # three firings, three attempts each
    assert host.count("gateway_rule_action_failures_total", rule="hot", action="webhook") == 3
    lines = [r.getMessage() for r in caplog.records if "webhook action failed" in r.getMessage()]
    assert lines == [f"rule hot: webhook action failed: POST {receiver.url}: HTTP 500 "
                     "Internal Server Error: busy after 3 attempt(s)"]
    # the pipeline went on
    rows = await host.outbox.read_telemetry(0, 100)
    assert [r.value for row in rows for r in row.readings] == [31, 20, 32, 20, 33]


async def test_a_client_error_is_not_retried(host: Host, receiver: Receiver) -> None:
    receiver.answers = [404]
    await start(host, [rule(when="temperature > 30", actions=[hook(receiver.url)])])
    await host.feed(host.r("temperature", 31))
    assert [s for s, _, _ in receiver.got] == [404]
    assert host.count("gateway_rule_action_failures_total", rule="r", action="webhook") == 1


async def test_a_receiver_too_slow_times_out(host: Host, receiver: Receiver,
                                             caplog: pytest.LogCaptureFixture) -> None:
    receiver.delay = 1.0
    await start(host, [rule(when="temperature > 30", actions=[
        hook(receiver.url, timeout="200ms", retries=0)])])
    await host.feed(host.r("temperature", 31))
    assert host.count("gateway_rule_action_failures_total", rule="r", action="webhook") == 1
    assert "no answer within 0.2 s" in caplog.text


async def test_nobody_listening_is_a_counted_failure(host: Host) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    await start(host, [rule(when="temperature > 30", actions=[hook(url, retries=1)])])
    await host.feed(host.r("temperature", 31))
    assert host.count("gateway_rule_action_failures_total", rule="r", action="webhook") == 1


@pytest.mark.parametrize(("webhook", "message"), [
    ({"url": "ftp://example.com/x"}, "expected an http:// or https:// URL (got scheme 'ftp')"),
    ({"url": "https:///nohost"}, "with a host"),
    ({"url": "http://example.com:port/"}, "expected an http:// or https:// URL"),
    ({"url": "http://exa mple.com/"}, "without spaces"),
    ({"url": "https://example.com", "headers": {"Bad Header": "x"}}, "not a valid HTTP header"),
    ({"url": "https://example.com", "headers": {"X-A": "a\r\nX-B: b"}}, "line break"),
    ({"url": "https://example.com", "retries": 50}, "less than or equal to 10"),
])
def test_bad_webhook_config_is_refused(webhook: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        ActionSpec.model_validate({"webhook": webhook})
    assert message in str(err.value)


def test_webhook_defaults() -> None:
    spec = ActionSpec.model_validate({"webhook": {"url": "https://hooks.example.com/gw"}})
    assert spec.kind == "webhook" and spec.webhook is not None
    assert spec.webhook.timeout == 5.0 and spec.webhook.retries == 3
    assert spec.webhook.bound == pytest.approx(5 * 4 + 1 + 2 + 4)
