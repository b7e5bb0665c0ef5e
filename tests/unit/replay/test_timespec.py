"""Times as users write them: RFC 3339 with a zone offset, at the calendar's ends."""

from __future__ import annotations

import pytest

from eventlog.errors import UsageError
from replay.timespec import parse_moment

HOUR_NS = 3600 * 10**9


def test_a_zone_offset_is_the_same_moment_in_utc() -> None:
    utc = parse_moment("2026-11-25T12:00:00.5Z")
    assert parse_moment("2026-11-25T14:30:00.5+02:30") == utc
    assert parse_moment("2026-11-25T07:00:00.5-05:00") == utc


def test_offsets_from_the_calendars_ends_are_moments_not_errors() -> None:
    last = parse_moment("9999-12-31T23:59:59Z")
    assert parse_moment("9999-12-31T23:59:59-23:59") == last + 23 * HOUR_NS + 59 * 60 * 10**9
    first = parse_moment("0001-01-01T00:00:00Z")
    assert parse_moment("0001-01-01T00:00:00+01:00") == first - HOUR_NS


@pytest.mark.parametrize("zone", ["+24:00", "-23:60", "+99:99"])
def test_an_offset_that_is_no_time_of_day_is_refused(zone: str) -> None:
    with pytest.raises(UsageError, match="zone offset"):
        parse_moment(f"2026-11-25T12:00:00{zone}")
