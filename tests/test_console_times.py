"""The console shows times as the county reads its clocks, not in UTC as they are stored."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from api.console.rendering import _templates


def test_a_stored_time_is_shown_in_the_countys_zone() -> None:
    template = _templates.env.from_string("{{ at | local }} / {{ at | local('%m-%d %H:%M') }}")
    at = datetime(2026, 11, 27, 20, 5, 9, tzinfo=UTC)
    assert template.render(at=at, zone=ZoneInfo("Asia/Shanghai")) == "2026-11-28 04:05:09 / 11-28 04:05"
