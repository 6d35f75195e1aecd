"""The scheduling benchmark's arithmetic: matching commands to runs, lateness, due times, scenarios."""

import json
import signal
from datetime import UTC, datetime

import pytest

from bench.command_listener import record
from bench.schedules import (
    Arrival,
    Restart,
    due_times,
    known_scenario,
    lateness,
    local_start,
    parse_arrivals,
    region_of,
    restart_of,
    summary,
    targets,
)

T = 1_800_000_000.0


def arrival(region: str, late: float, command_id: str | None = None) -> Arrival:
    return Arrival(T + late, region, command_id or f"c-{region}-{late}", None)


def test_lateness_is_arrival_minus_due_for_each_run() -> None:
    due = [(f"42120{i}", T) for i in range(100)]
    got = [arrival(f"42120{i}", i / 100) for i in range(100)]
    late = lateness(due, got)
    assert (late.runs, late.arrived, late.within_1s) == (100, 100, 100)
    assert late.p50_s == 0.49
    assert late.p99_s == 0.98
    assert late.max_s == 0.99
    assert late.min_s == 0.0


def test_a_run_that_never_arrived_counts_as_not_yet_happened() -> None:
    due = [("421201", T), ("421202", T)]
    late = lateness(due, [arrival("421201", 0.2)])
    assert late.arrived == 1
    assert late.p50_s == 0.2
    assert late.p99_s is None
    assert late.max_s is None


def test_a_second_copy_of_a_command_is_a_duplicate_not_a_run() -> None:
    due = [("421201", T)]
    got = [arrival("421201", 0.1, "x"), arrival("421201", 0.5, "x")]
    late = lateness(due, got)
    assert (late.arrived, late.duplicates, late.max_s) == (1, 1, 0.1)


def test_runs_sharing_a_region_are_matched_in_time_order() -> None:
    due = [("421201", T + 60), ("421201", T)]
    got = [arrival("421201", 60.3), arrival("421201", 0.1)]
    late = lateness(due, got)
    assert (late.arrived, late.min_s, late.max_s) == (2, 0.1, 0.3)


def test_a_command_no_run_was_due_for_is_unexpected() -> None:
    late = lateness([("421201", T)], [arrival("421201", 0.1), arrival("421299", 0.1)])
    assert (late.arrived, late.unexpected) == (1, 1)


def test_region_of_a_command_topic() -> None:
    assert region_of("bench-ab12cd/v1/region/421202101/cmd") == "421202101"
    with pytest.raises(ValueError):
        region_of("bench/v1/terminal/t1/cmd")


def test_listener_lines_parse_back_into_arrivals() -> None:
    payload = json.dumps({"id": "b1", "issued_at": "2027-01-15T08:00:00Z", "op": "play"}).encode()
    line = json.dumps(record(payload, "p/v1/region/421202/cmd", T, False))
    assert parse_arrivals([line, ""]) == [Arrival(T, "421202", "b1", "2027-01-15T08:00:00Z")]


def test_listener_keeps_the_size_of_a_payload_that_is_not_json() -> None:
    assert record(b"\xff\x00", "p/v1/region/4212/cmd", T, True)["bad_payload"] == 2


def test_a_burst_is_due_at_one_second_and_a_spread_over_the_span() -> None:
    assert due_times("burst", 3, T, 300) == [T, T, T]
    spread = due_times("spread", 1000, T, 300)
    assert (spread[0], spread[-1]) == (T, T + 300)
    assert spread == sorted(spread)
    assert all(d == int(d) for d in spread)


def test_restart_scenarios_name_the_signal_and_how_long_before() -> None:
    assert restart_of("restart-term-45") == Restart(signal.SIGTERM, 45.0)
    assert restart_of("restart-kill-10") == Restart(signal.SIGKILL, 10.0)
    assert restart_of("burst") is None
    with pytest.raises(ValueError):
        restart_of("restart-stop-10")


def test_any_restart_time_is_a_scenario_but_nothing_else_is() -> None:
    assert known_scenario("restart-kill-25")
    assert known_scenario("spread")
    assert not known_scenario("restart-kill-soon")
    assert not known_scenario("storm")


def test_targets_use_every_village_before_reusing_one() -> None:
    assert targets(["a", "b", "c"], 2) == ["a", "b"]
    assert targets(["a", "b"], 5) == ["a", "b", "a", "b", "a"]


def test_local_start_is_the_wall_clock_in_the_county_without_offset() -> None:
    due = datetime(2027, 1, 14, 22, 30, tzinfo=UTC).timestamp()
    assert local_start(due) == "2027-01-15T06:30:00"


def test_summary_of_runs_is_min_median_max_and_unknown_if_any_run_lacks_it() -> None:
    assert summary([0.3, 0.1, 0.2]) == {"min": 0.1, "median": 0.2, "max": 0.3}
    assert summary([0.1, 0.4]) == {"min": 0.1, "median": 0.25, "max": 0.4}
    assert summary([0.1, None])["median"] is None
