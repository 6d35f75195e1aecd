"""How `cunxiang bench fanout` runs its simulated terminals: how many processes share them, and that
thousands of playbacks falling due at once cannot keep a terminal of the same process from reading
the command that reached it meanwhile (real terminals each have their own CPU)."""

import functools
import selectors
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

from bench.fanout import FanoutResult, split, summarise
from bench.harness import cpu_snapshot, cpu_used, machine_busy_seconds
from bench.lean import TIMERS_PER_TURN, Reactor
from controller.models import Delivery
from simulator.fleet import SimulatedSpec


def specs(n: int) -> list[SimulatedSpec]:
    return [SimulatedSpec(f"sim-421202001001-{i}", "421202001001") for i in range(1, n + 1)]


@pytest.mark.parametrize(("n", "processes", "sizes"), [(10, 1, [10]), (10, 3, [4, 3, 3]), (2, 5, [1, 1])])
def test_split_spreads_every_terminal_over_the_processes_once(
    n: int, processes: int, sizes: list[int]
) -> None:
    parts = split(specs(n), processes)
    assert [len(part) for part in parts] == sizes
    assert sorted(s.terminal_id for part in parts for s in part) == sorted(s.terminal_id for s in specs(n))


class Reader:
    """What the reactor calls for a ready socket (as for a LeanTerminal)."""

    def __init__(self, sock: socket.socket, log: list[str]) -> None:
        self.sock: socket.socket | None = sock
        self.log = log

    def writable(self) -> None:
        raise AssertionError("not watched for writing")

    def readable(self) -> None:
        assert self.sock is not None
        self.log.append(f"read {self.sock.recv(100).decode()}")


def test_reactor_reads_a_ready_socket_between_batches_of_due_timers() -> None:
    reactor = Reactor()
    log: list[str] = []
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        reactor.selector.register(ours, selectors.EVENT_READ, Reader(ours, log))
        due = 3 * TIMERS_PER_TURN
        for i in range(due):
            reactor.call_later(0.0, functools.partial(log.append, f"timer {i}"))
        time.sleep(0.01)
        reactor.run_once(0.0)
        assert log == [f"timer {i}" for i in range(TIMERS_PER_TURN)]

        theirs.sendall(b"command")
        reactor.run_once(0.0)
        assert log[TIMERS_PER_TURN] == "read command"
        second_batch = [f"timer {i}" for i in range(TIMERS_PER_TURN, 2 * TIMERS_PER_TURN)]
        assert log[TIMERS_PER_TURN + 1 :] == second_batch

        reactor.run_once(0.0)
        reactor.run_once(0.0)
        assert log[-1] == f"timer {due - 1}"
        assert len(log) == due + 1
    finally:
        reactor.selector.close()
        ours.close()
        theirs.close()


def test_cpu_report_names_the_time_the_hypervisor_took() -> None:
    before = machine_busy_seconds()
    if before is None:
        pytest.skip("no /proc/stat here")
    assert len(before) == 3 and all(value >= 0 for value in before)
    first = cpu_snapshot({})
    second = cpu_snapshot({})
    used = cpu_used(first, second, {})
    assert used["stolen by the hypervisor"] >= 0
    assert "kernel irq" in used


def test_summary_gives_each_terminals_time_from_taking_the_command_to_its_received_handled() -> None:
    t0 = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
    rows, taken = [], {}
    for i in range(1, 1001):
        terminal = f"sim-421202001001-{i}"
        taken[terminal] = t0.timestamp() + 0.5 + i / 1000
        lag = 0.5 if i == 1000 else 0.01
        rows.append(
            Delivery(
                broadcast_id="b",
                terminal_id=terminal,
                region_code="421202001001",
                state="completed",
                updated_at=t0,
                received_at=t0 + timedelta(seconds=0.5 + i / 1000 + lag),
                finished_at=t0 + timedelta(seconds=3),
            )
        )
    result = FanoutResult(terminals=1000, broker="mosquitto", playback_s=1.0)
    summarise(result, rows, t0, taken)
    assert result.handling_lag_s == {50: 0.01, 99: 0.01, 99.9: 0.01}
    assert result.received_100_s == 2.0
    assert result.as_json()["handling_lag_s"] == {"50%": 0.01, "99%": 0.01, "99.9%": 0.01}
