"""The benchmarks' arithmetic (quantiles, the ingest rate from the writer's commit log, the profile
summary). The controller's MQTT receive path they led to is tested in test_mqtt_client.py."""

from bench import ingest
from bench.fanout import metric_total
from bench.harness import MQTT_RECEIVE, ingest_rate, persisted_at, quantile, summarise_profile


def test_quantile_is_the_time_by_which_that_share_of_all_n_had_happened() -> None:
    values = [float(i) for i in range(1, 10_001)]
    assert quantile(values, 0.99, 10_000) == 9_900.0
    assert quantile(values, 0.999, 10_000) == 9_990.0
    assert quantile(values, 1.0, 10_000) == 10_000.0


def test_quantile_counts_missing_values_as_not_yet_happened() -> None:
    values = [1.0, 2.0, 3.0]
    assert quantile(values, 0.5, 4) == 2.0
    assert quantile(values, 0.999, 4) is None


def test_quantile_of_99_9_percent_of_few_terminals_needs_all_of_them() -> None:
    assert quantile([1.0, 2.0], 0.999, 2) == 2.0


def commit(at: float, delivery: int, **others: int) -> dict[str, object]:
    updates = {"delivery": delivery, **others}
    return {"at": at, "updates": updates, "rows": updates}


def test_ingest_rate_leaves_out_the_first_batch_whose_gathering_time_is_unknown() -> None:
    commits = [commit(10.0, 1000), commit(10.5, 4000), commit(11.0, 6000)]
    rate = ingest_rate(commits, since=0.0)
    assert rate.acks == 11_000
    assert rate.batches == 3
    assert rate.per_s == 10_000  # (4000 + 6000) / (11.0 - 10.0)


def test_ingest_rate_counts_only_delivery_updates_committed_since_the_start() -> None:
    commits = [commit(5.0, 500), commit(10.0, 0, terminal=300), commit(10.0, 100), commit(12.0, 300)]
    rate = ingest_rate(commits, since=9.0)
    assert (rate.acks, rate.batches, rate.first_commit, rate.last_commit) == (400, 2, 10.0, 12.0)
    assert rate.per_s == 150


def test_ingest_rate_of_a_single_batch_is_unknown() -> None:
    rate = ingest_rate([commit(3.0, 30_000)], since=0.0)
    assert rate.acks == 30_000
    assert rate.per_s is None


def test_ingest_rate_without_commits_is_empty() -> None:
    assert ingest_rate([], since=0.0).acks == 0


def test_profile_summary_puts_each_sample_in_its_first_matching_category() -> None:
    raw = "\n".join(
        [
            "run (asyncio/base_events.py:1);loop_read (paho/mqtt/client.py:2);"
            "handle_message (controller/service.py:3);decode (devices/messages.py:4) 3",
            "run (asyncio/base_events.py:1);loop_read (paho/mqtt/client.py:2) 1",
            "_bootstrap (threading.py:9);_write (controller/writer.py:5);execute (sqlalchemy/x.py:6) 4",
            "not a sample line",
        ]
    )
    summary = summarise_profile(raw, ingest.CATEGORIES)
    assert summary["samples"] == 8
    categories = summary["by_category_pct"]
    assert categories["database writer thread (SQLAlchemy, sqlite3)"] == 50.0
    assert categories["decoding and validating acks (devices.messages)"] == 37.5
    assert categories[MQTT_RECEIVE] == 12.5
    assert summary["top_functions_pct"]["execute (sqlalchemy/x.py)"] == 50.0


def test_metric_total_reads_an_unlabelled_counter_and_not_its_namesakes() -> None:
    exposition = (
        "# HELP cunxiang_delivery_retries_total Commands sent again\n"
        "# TYPE cunxiang_delivery_retries_total counter\n"
        "cunxiang_delivery_retries_total_extra 9.0\n"
        "cunxiang_delivery_retries_total 1234.0\n"
    )
    assert metric_total(exposition, "cunxiang_delivery_retries_total") == 1234
    assert metric_total(exposition, "cunxiang_missing_total") is None


def test_an_update_counts_as_persisted_by_the_first_batch_taken_after_it() -> None:
    commits = [
        {"started": 10.0, "at": 10.5, "updates": {}, "rows": {}},
        {"started": 10.6, "at": 11.0, "updates": {}, "rows": {}},
    ]
    # 10.2 was recorded while the first batch was being written: it is in the second.
    assert persisted_at([9.9, 10.0, 10.2, 10.6, 10.7], commits) == [10.5, 10.5, 11.0, 11.0, None]
