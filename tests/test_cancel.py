"""Cancelling a broadcast: on the terminal (devices/terminal_core.py) and end to end."""

from datetime import UTC, datetime, timedelta

from devices.messages import AckStage, Cancel
from devices.terminal_core import TerminalCore
from tests.builders import TEST_KEYS, make_command, signed
from tests.live import LiveServer, eventually, specs_in

NOW = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)


def cancel_of(command_id: str) -> Cancel:
    return Cancel(id="cancel-0001", op="cancel", cancels=command_id, issuer_region="421202", issued_at=NOW)


def test_cancel_stops_the_playing_command_and_acks_cancelled() -> None:
    core = TerminalCore("t-1", TEST_KEYS)
    command = make_command(issued_at=NOW - timedelta(seconds=1))
    core.on_command(command, NOW)
    step = core.on_payload(signed(cancel_of(command.id), NOW), NOW)
    assert step.stop == command.id and core.current is None
    [ack] = step.acks
    assert (ack.command_id, ack.stage, ack.by) == (command.id, AckStage.CANCELLED, "cancel-0001")


def test_cancel_before_the_command_arrives_means_it_never_starts() -> None:
    core = TerminalCore("t-1", TEST_KEYS)
    command = make_command(issued_at=NOW - timedelta(seconds=1))
    assert core.on_cancel(cancel_of(command.id), NOW).acks[0].stage is AckStage.CANCELLED
    late = core.on_command(command, NOW)
    assert late.start is None and late.acks[0].stage is AckStage.CANCELLED


def test_cancel_of_a_finished_command_repeats_its_final_ack() -> None:
    core = TerminalCore("t-1", TEST_KEYS)
    command = make_command(issued_at=NOW - timedelta(seconds=1))
    core.on_command(command, NOW)
    core.on_finished(command.id, NOW)
    [ack] = core.on_cancel(cancel_of(command.id), NOW).acks
    assert ack.stage is AckStage.COMPLETED


def test_cancel_does_not_stop_a_different_command() -> None:
    core = TerminalCore("t-1", TEST_KEYS)
    playing = make_command(issued_at=NOW - timedelta(seconds=1))
    core.on_command(playing, NOW)
    step = core.on_cancel(cancel_of("some-other-command"), NOW)
    assert step.stop is None and core.current is playing


async def test_operator_cancels_a_playing_alert_and_every_terminal_reports_cancelled(
    live: LiveServer,
) -> None:
    specs = specs_in(["421202100001", "421202100004", "421202100005"])
    await live.register(specs)
    async with live.fleet(specs[:2], playback_s=30) as fleet:
        accepted = await live.send(
            kind="emergency", level=1, regions=["421202100"], text="误报", expires_in=120
        )
        await live.report_when(accepted["id"], lambda r: r["counts"]["playing"] == 2)
        response = await live.http.post(f"/api/v1/broadcasts/{accepted['id']}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["state"] == "cancelling"
        report = await live.report_when(accepted["id"], lambda r: r["counts"]["cancelled"] == 3, timeout=10)
        await eventually(lambda: all(t.core.current is None for t in fleet.terminals))
        # The third never answered: it is owed the cancel, in case it still holds the command.
        assert report["state"] == "cancelling"
        async with live.fleet(specs[2:]) as latecomer:
            report = await live.report_when(accepted["id"], lambda r: r["state"] == "cancelled", timeout=10)
            assert latecomer.terminals[0].commands_seen == 0
    assert report["counts"]["cancelled"] == 3
    again = await live.http.post(f"/api/v1/broadcasts/{accepted['id']}/cancel")
    assert again.status_code == 409 and "nothing to cancel" in again.json()["detail"]


async def test_cancelling_a_finished_broadcast_is_409_and_unknown_is_404(live: LiveServer) -> None:
    accepted = await live.send(kind="notice", regions=["421202107"], text="无终端", expires_in=60)
    response = await live.http.post(f"/api/v1/broadcasts/{accepted['id']}/cancel")
    assert response.status_code == 409 and "finished" in response.json()["detail"]
    assert (await live.http.post("/api/v1/broadcasts/nope/cancel")).status_code == 404


async def test_cancel_right_after_sending_still_reaches_every_terminal(live: LiveServer) -> None:
    """Cancelled before any acknowledgement was processed: the cancel must still go out."""
    specs = specs_in(["421202100001", "421202100004"])
    await live.register(specs)
    async with live.fleet(specs, playback_s=30) as fleet:
        accepted = await live.send(
            kind="emergency", level=1, regions=["421202100"], text="误发", expires_in=120
        )
        response = await live.http.post(f"/api/v1/broadcasts/{accepted['id']}/cancel")
        assert response.status_code == 202, response.text
        report = await live.report_when(accepted["id"], lambda r: r["state"] == "cancelled", timeout=15)
        await eventually(lambda: all(t.core.current is None for t in fleet.terminals))
    assert report["counts"]["cancelled"] == 2
