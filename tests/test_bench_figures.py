"""The benchmarks' arithmetic (quantiles, the ingest rate from the writer's commit log, the profile
summary), and the two pieces of the controller's MQTT receive path they led to: the buffered
socket and the inbox."""

import aiomqtt
import pytest

from bench import ingest
from bench.fanout import metric_total
from bench.harness import ingest_rate, quantile, summarise_profile
from controller.bus import READ_SIZE, _BufferedSocket, _Inbox


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
    assert categories["MQTT receive (paho-mqtt, aiomqtt)"] == 12.5
    assert summary["top_functions_pct"]["execute (sqlalchemy/x.py)"] == 50.0


class FakeSocket:
    """A non-blocking socket holding `chunks` to be received, one per recv call at most."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.asked: list[int] = []

    def recv(self, bufsize: int) -> bytes:
        self.asked.append(bufsize)
        if not self.chunks:
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        head, rest = chunk[:bufsize], chunk[bufsize:]
        if rest:
            self.chunks.insert(0, rest)
        return head

    def fileno(self) -> int:
        return 42


def test_buffered_socket_serves_small_reads_from_one_large_read() -> None:
    raw = FakeSocket([b"abcdef"])
    sock = _BufferedSocket(raw)
    assert [sock.recv(1), sock.recv(2), sock.recv(10)] == [b"a", b"bc", b"def"]
    assert raw.asked == [READ_SIZE]
    assert sock.fileno() == 42


def test_buffered_socket_reads_the_socket_once_per_readiness_event() -> None:
    raw = FakeSocket([b"ab", b"cd"])
    sock = _BufferedSocket(raw)
    assert sock.recv(1) == b"a"
    assert sock.pending() == 1
    assert sock.recv(5) == b"b"
    with pytest.raises(BlockingIOError):
        sock.recv(1)  # empty, and already filled during this event: "no data" until the next one
    assert sock.pending() == 0  # aiomqtt's read callback ends here...
    assert sock.recv(1) == b"c"  # ...and the next one may read the socket again
    assert raw.asked == [READ_SIZE, READ_SIZE]


def test_buffered_socket_reports_the_end_of_the_connection() -> None:
    class Closed(FakeSocket):
        def recv(self, bufsize: int) -> bytes:
            return b""

    assert _BufferedSocket(Closed([])).recv(1) == b""


def test_inbox_holds_messages_until_the_bus_is_connected_then_hands_them_over_in_order() -> None:
    seen: list[tuple[str, bytes]] = []
    inbox = _Inbox(lambda topic, payload: seen.append((topic, payload)))
    queue = inbox.queue_type()()
    queue.put_nowait(
        aiomqtt.Message("cx/v1/terminal/a/status", b"1", qos=1, retain=True, mid=1, properties=None)
    )
    assert seen == []
    inbox.open()
    queue.put_nowait(
        aiomqtt.Message("cx/v1/terminal/a/ack", b"2", qos=1, retain=False, mid=2, properties=None)
    )
    assert seen == [("cx/v1/terminal/a/status", b"1"), ("cx/v1/terminal/a/ack", b"2")]
    assert queue.qsize() == 0


def test_inbox_keeps_a_failing_handler_out_of_the_read_loop() -> None:
    def fail(_topic: str, _payload: bytes) -> None:
        raise RuntimeError("a defect of ours")

    inbox = _Inbox(fail)
    inbox.open()
    inbox.put(aiomqtt.Message("cx/v1/terminal/a/ack", b"x", qos=1, retain=False, mid=1, properties=None))


def test_metric_total_reads_an_unlabelled_counter_and_not_its_namesakes() -> None:
    exposition = (
        "# HELP cunxiang_delivery_retries_total Commands sent again\n"
        "# TYPE cunxiang_delivery_retries_total counter\n"
        "cunxiang_delivery_retries_total_extra 9.0\n"
        "cunxiang_delivery_retries_total 1234.0\n"
    )
    assert metric_total(exposition, "cunxiang_delivery_retries_total") == 1234
    assert metric_total(exposition, "cunxiang_missing_total") is None
