"""The ``api:`` section."""

from __future__ import annotations

from pydantic import Field

from gateway.config.types import Section


class ApiConfig(Section):
    enabled: bool = True
    socket: str | None = Field(default=None, description="default: <state_dir>/gateway.sock")
    http: str | None = Field(default=None, description="host:port, e.g. 127.0.0.1:8780")
    token_file: str | None = None
