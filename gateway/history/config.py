"""The ``history:`` section: the local time series kept on the gateway."""

from __future__ import annotations

from pydantic import Field, model_validator

from gateway.config.types import ByteSize, Duration, Section

#: the two bucket resolutions (seconds): one minute, rolled up into a quarter of an hour
FINE_STEP, COARSE_STEP = 60, 900


class HistoryConfig(Section):
    """Recent readings kept locally: raw for a short span, then min/avg/max/count buckets.

    Off by default: at a home load (50 devices, one message each per 30 s) it writes about
    60 MB a day (measured, tests/bench/bench_history.py), which with the outbox's own
    writes is beyond DESIGN.md's 100 MB a day; at 1,000 messages/s it adds a few bytes per
    message (raw readings are not kept above ``raw_max_rate``, only one-minute buckets).
    """

    enabled: bool = False
    path: str | None = Field(default=None, description="default: <state_dir>/history.db")
    flush_interval: Duration = Field(
        default=60.0, ge=1, le=3600,
        description="readings wait this long in memory, then go to disk in one "
                    "transaction; a SIGKILL or power cut loses at most this much")
    raw_span: Duration = Field(default=3600.0, ge=0, le=7 * 86400,
                               description="raw readings kept this long (0: none)")
    raw_max_rate: float = Field(
        default=50.0, ge=0, le=1_000_000,
        description="values/s over a flush above which its raw readings are not kept "
                    "(its one-minute buckets are); keeps disk writes small at high rates")
    fine_span: Duration = Field(default=2 * 86400.0, ge=3600, le=90 * 86400,
                                description="one-minute buckets kept this long")
    max_age: Duration = Field(default=30 * 86400.0, ge=86400, le=3650 * 86400,
                              description="15-minute buckets kept this long")
    max_bytes: ByteSize = Field(default=64 * 1024**2, ge=1024**2,
                                description="the oldest data goes first beyond this size")
    max_pending: int = Field(default=500_000, ge=1000, le=100_000_000,
                             description="readings waiting for a flush at most; more are "
                                         "dropped from history (counted)")

    @model_validator(mode="after")
    def _spans_in_order(self) -> HistoryConfig:
        if self.max_age < self.fine_span:
            raise ValueError(f"max_age ({self.max_age:g} s) must be at least fine_span "
                             f"({self.fine_span:g} s): the 15-minute buckets outlive the "
                             "one-minute ones")
        return self
