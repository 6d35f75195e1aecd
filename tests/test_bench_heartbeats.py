"""The heartbeat benchmark's pure parts: the plan of heartbeats and faults, the telemetry it sends,
and the arithmetic of its figures (no timing here)."""

import random

import pytest

from bench import heartbeats
from bench.harness import MQTT_RECEIVE, summarise_profile
from bench.heartbeat_publisher import FAULTS, Beat, fault_indices, heartbeat, plan
from bench.heartbeats import core_share, metric_value, per_100k, rows_updated
from controller.alarms import Thresholds, faults_in
from devices.messages import decode_heartbeat, encode


def test_plan_spreads_heartbeats_round_robin_so_every_terminal_beats_before_any_beats_twice() -> None:
    beats = plan(terminals=3, total=7)
    assert [(b.terminal, b.round) for b in beats] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]


def test_plan_without_a_fault_share_reports_no_fault() -> None:
    assert all(b.fault is None for b in plan(terminals=10, total=1000))


def test_plan_puts_faults_in_the_share_of_heartbeats_asked_for() -> None:
    beats = plan(terminals=100, total=10_000, share=0.01)
    assert sum(1 for b in beats if b.fault is not None) == 100


def test_every_planned_fault_is_cleared_by_the_same_terminals_next_heartbeat() -> None:
    terminals = 50
    beats = plan(terminals=terminals, total=5_000, share=0.05)
    for i, beat in enumerate(beats):
        if beat.fault is not None:
            following = beats[i + terminals]
            assert following.terminal == beat.terminal
            assert following.fault is None


def test_planned_faults_take_every_kind_in_turn() -> None:
    kinds = {b.fault for b in plan(terminals=10, total=1_000, share=0.05) if b.fault is not None}
    assert kinds == set(FAULTS)


def test_fault_share_needs_a_next_heartbeat_per_terminal() -> None:
    with pytest.raises(ValueError, match="send more heartbeats"):
        fault_indices(terminals=100, total=100, share=0.01)


def test_fault_share_above_the_maximum_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and"):
        fault_indices(terminals=10, total=1000, share=0.5)


def test_a_healthy_heartbeat_is_valid_telemetry_that_shows_no_fault() -> None:
    beat = heartbeat("sim-421202001001-1", Beat(terminal=0, round=3), random.Random(0))
    decoded, dropped = decode_heartbeat(encode(beat))
    assert dropped == []
    assert decoded == beat
    assert all(detail is None for _fault, detail in faults_in(decoded, Thresholds()))


@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_heartbeat_shows_exactly_its_fault(fault: str) -> None:
    beat = heartbeat("sim-421202001001-1", Beat(terminal=0, round=0, fault=fault), random.Random(0))
    decoded, dropped = decode_heartbeat(encode(beat))
    assert dropped == []
    shown = [kind for kind, detail in faults_in(decoded, Thresholds()) if detail is not None]
    assert len(shown) == 1


PROMETHEUS = """\
# HELP cunxiang_mqtt_messages_received_total MQTT messages received, by channel
# TYPE cunxiang_mqtt_messages_received_total counter
cunxiang_mqtt_messages_received_total{channel="status"} 10000.0
cunxiang_mqtt_messages_received_total{channel="heartbeat"} 100000.0
cunxiang_db_flush_rows_sum 123.0
"""


def test_metric_value_picks_the_sample_with_the_labels_asked_for() -> None:
    name = "cunxiang_mqtt_messages_received_total"
    assert metric_value(PROMETHEUS, name, {"channel": "heartbeat"}) == 100_000.0
    assert metric_value(PROMETHEUS, name, {"channel": "status"}) == 10_000.0


def test_metric_value_reads_an_unlabelled_sample_and_is_zero_for_a_missing_one() -> None:
    assert metric_value(PROMETHEUS, "cunxiang_db_flush_rows_sum") == 123.0
    assert metric_value(PROMETHEUS, "cunxiang_db_flushes_total") == 0.0


def test_rows_updated_sums_the_rows_of_the_batches_committed_in_the_window() -> None:
    commits = [
        {"at": 1.0, "updates": {"terminal": 5}, "rows": {"terminal": 5}},
        {"at": 2.0, "updates": {"terminal": 3, "alarm": 2}, "rows": {"terminal": 2, "alarm": 2}},
        {"at": 3.0, "updates": {"alarm": 1}, "rows": {"alarm": 1}},
    ]
    assert rows_updated(commits, since=1.5) == {"terminal": 2, "alarm": 3}
    assert rows_updated(commits, since=1.5, until=2.5) == {"terminal": 2, "alarm": 2}


def test_cpu_per_100k_heartbeats_and_the_share_of_a_core_at_30_s() -> None:
    assert per_100k(12.0, 200_000) == 6.0
    assert per_100k(1.0, 0) is None
    # 10,000 terminals every 30 s are 333 a second: at 12 s per 100,000, 4% of a core.
    assert core_share(12.0, 10_000) == pytest.approx(0.04)


def test_profile_summary_counts_a_sample_in_the_heartbeat_path_it_is_in() -> None:
    outer = "run (asyncio/runners.py:190);loop_read (paho/mqtt/client.py:2102)"
    handle = f"{outer};handle_message (controller/service.py:300)"
    raw = "\n".join(
        [
            f"{handle};decode_heartbeat (devices/messages.py:246);model_validate (pydantic/main.py:5) 6",
            f"{handle};labels (prometheus_client/metrics.py:1) 2",
            f"{outer};_packet_read (paho/mqtt/client.py:3149) 2",
        ]
    )
    summary = summarise_profile(raw, heartbeats.CATEGORIES, top=15, other="other (idle threads included)")
    assert summary["samples"] == 10
    assert summary["by_category_pct"] == {
        "decoding and validating (decode_heartbeat, pydantic)": 60.0,
        "metrics (prometheus_client)": 20.0,
        MQTT_RECEIVE: 20.0,
    }
