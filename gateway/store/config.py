"""The ``store:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.config.types import ByteSize, Duration, Section


class StoreConfig(Section):
    """Outbox: where accepted readings wait for the cloud."""

    path: str | None = Field(default=None, description="default: <state_dir>/outbox.db")
    max_bytes: ByteSize = Field(default=256 * 1024**2, gt=0)
    max_age: Duration = Field(default=7 * 86400.0, gt=0)
    commit_interval: Duration = Field(
        default=0.25, gt=0, le=5,
        description="longest a batch waits in memory for its commit, unless the cloud "
                    "acknowledges it first")
    commit_max_rows: int = Field(default=2000, gt=0, le=1_000_000,
                                 description="commit at once when this many readings wait")
    max_pending: int = Field(default=50_000, gt=0, le=10_000_000)
    synchronous: Literal["full", "normal"] = "full"
    dead_letter_max: int = Field(default=1000, ge=1, le=1_000_000,
                                 description="readings kept aside that could not be stored")
