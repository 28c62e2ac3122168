"""History query parameters: every input either parses into a sane query or is refused
with a message naming the accepted forms; never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.history.query import (
    MAX_BUCKETS,
    STEP_FORMS,
    TIME_FORMS,
    QueryError,
    parse_query,
    parse_time,
)

NOW = 1_767_225_600.0


def test_the_accepted_time_forms() -> None:
    assert parse_time("now", NOW, "since") == NOW
    assert parse_time("1h", NOW, "since") == NOW - 3600
    assert parse_time("-15m", NOW, "since") == NOW - 900
    assert parse_time("1767225000", NOW, "since") == 1767225000.0
    assert parse_time("2026-01-01T00:00:00Z", NOW, "since") == NOW
    assert parse_time("2026-01-01T01:00:00+01:00", NOW, "since") == NOW
    assert parse_time("2026-01-01 00:00:00", NOW, "since") == NOW  # naive: UTC


@pytest.mark.parametrize("text", ["yesterday", "", "1x", "2026-13-01", "1e999", "-5"])
def test_a_bad_time_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(QueryError) as exc:
        parse_time(text, NOW, "since")
    assert TIME_FORMS in str(exc.value)


def test_auto_step_is_raw_for_a_recent_span_and_buckets_for_longer() -> None:
    assert parse_query(None, None, None, NOW, 3600).step is None
    assert parse_query("1d", None, None, NOW, 3600).step == 300
    assert parse_query("30d", None, None, NOW, 3600).step == 3600
    assert parse_query("1h", None, "raw", NOW, 0).step is None
    assert parse_query("1h", None, "5m", NOW, 3600).step == 300


def test_a_step_too_small_for_the_span_is_refused_with_the_smallest_that_fits() -> None:
    with pytest.raises(QueryError, match=r"at least 18s"):
        parse_query("1d", None, "1s", NOW, 3600)
    with pytest.raises(QueryError, match=STEP_FORMS.replace("(", r"\(").replace(")", r"\)")):
        parse_query("1d", None, "often", NOW, 3600)
    with pytest.raises(QueryError, match="before until"):
        parse_query("now", "1h", None, NOW, 3600)


texts = st.one_of(st.none(), st.text(max_size=30),
                  st.sampled_from(["now", "1h", "15m", "7d", "raw", "5m", "0", "1s", "-1h",
                                   "2026-01-01T00:00:00Z", "1767225600", "3650d", "1e30"]))


@given(texts, texts, texts)
def test_any_parameters_parse_or_are_refused_clearly(since: str | None, until: str | None,
                                                     step: str | None) -> None:
    try:
        q = parse_query(since, until, step, NOW, 3600)
    except QueryError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert q.since < q.until
    if q.step is not None:
        assert q.step >= 1 and (q.until - q.since) / q.step <= MAX_BUCKETS
