"""The ``webhook`` action: POST a rule's event as JSON, with bounded, jittered retries.

One aiohttp client session per rule engine, opened on the first webhook and closed when
the engine stops. A connection error, a timeout, a 429 or a 5xx answer is retried (the
receiver may get better); any other 4xx is final (the request itself is wrong). The last
failure raises :class:`~gateway.rules.ports.ActionError`; the engine counts and logs it.
Imported only when a rule has a webhook action (aiohttp takes a while to import).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from gateway.core.backoff import Backoff
from gateway.rules.config import WebhookAction
from gateway.rules.ports import ActionError

log = logging.getLogger("gateway.rules")

#: at most this much of a refusing answer's body goes into the failure message
_DETAIL_MAX = 200


class WebhookClient:
    """Posts events to webhook URLs; see the module docstring."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": "edge-gateway rules"},
                json_serialize=lambda o: json.dumps(o, separators=(",", ":"), default=str))
        return self._session

    async def post(self, spec: WebhookAction, body: dict[str, Any]) -> None:
        """POST ``body`` to ``spec.url``; raise :class:`ActionError` once retries run out."""
        backoff = Backoff(spec.backoff, spec.backoff_max) if spec.backoff else None
        attempts = spec.retries + 1
        detail, attempt = "", 0
        for attempt in range(1, attempts + 1):
            retry, detail = await self._attempt(spec, body)
            if not detail:
                return
            if not retry or attempt == attempts:
                break
            delay = backoff.next_delay() if backoff is not None else 0.0
            log.debug("webhook %s: attempt %d of %d failed (%s); again in %.1f s",
                      spec.url, attempt, attempts, detail, delay)
            await asyncio.sleep(delay)
        tries = f" after {attempt} attempt(s)" if attempt > 1 else ""
        raise ActionError(f"POST {spec.url}: {detail}{tries}")

    async def _attempt(self, spec: WebhookAction, body: dict[str, Any]) -> tuple[bool, str]:
        """One POST: ``(retry?, "")`` on success, else ``(worth retrying, why)``."""
        try:
            async with self._client().post(
                    spec.url, json=body, headers=spec.headers,
                    timeout=aiohttp.ClientTimeout(total=spec.timeout)) as resp:
                if resp.status < 300:
                    return False, ""
                text = (await resp.text(errors="replace"))[:_DETAIL_MAX].strip()
                why = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
                if text:
                    why += f": {text}"
                return resp.status == 429 or resp.status >= 500, why
        except TimeoutError:
            return True, f"no answer within {spec.timeout:g} s"
        except aiohttp.ClientError as exc:
            return True, f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        """Close the session (posts still running fail)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
