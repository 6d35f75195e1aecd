"""An accepted alert is never lost: not when the broker is away, not when the controller restarts."""

import socket

from controller.embedded_broker import EmbeddedBroker, free_port
from controller.regions import villages_under
from tests.conftest import make_settings
from tests.live import LiveServer, eventually, metric, metrics_text, specs_in


def port_no_client_can_take() -> int:
    """A free port below the ephemeral range. A client retrying a port of that range where nothing
    listens can end up connected to itself (TCP simultaneous open), holding the port."""
    for port in range(20000, 32000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32000")


async def test_alert_accepted_while_broker_is_down_is_delivered_after_restart(sqlite_url: str) -> None:
    port = port_no_client_can_take()
    settings = make_settings(sqlite_url, f"mqtt://127.0.0.1:{port}")
    first = LiveServer(settings)
    await first.start()
    try:
        villages = await first.controller.writer.call(lambda s: villages_under(s, "421202103"))
        specs = specs_in([v.code for v in villages], per_village=1)[:5]
        await first.register(specs)
        accepted = await first.send(
            kind="emergency", level=1, regions=["421202103"], text="山洪", expires_in=300
        )
        assert accepted["state"] == "accepted"
        report = await first.report(accepted["id"])
        assert report["counts"]["pending"] == 5
    finally:
        await first.stop()

    broker = EmbeddedBroker("127.0.0.1", port)
    broker.start()
    second = LiveServer(settings)
    try:
        await second.start()
        async with second.fleet(specs):
            report = await second.report_when(accepted["id"], lambda r: r["state"] == "finished")
        assert report["counts"]["completed"] == 5
    finally:
        await second.stop()
        broker.stop()


async def test_controller_reconnecting_to_the_broker_republishes_what_is_unacknowledged(
    sqlite_url: str,
) -> None:
    port = free_port()
    broker = EmbeddedBroker("127.0.0.1", port)
    broker.start()
    live = LiveServer(make_settings(sqlite_url, f"mqtt://127.0.0.1:{port}"))
    await live.start()
    try:
        villages = await live.controller.writer.call(lambda s: villages_under(s, "421202104"))
        specs = specs_in([v.code for v in villages], per_village=1)[:3]
        await live.register(specs)
        broker.stop()
        await eventually(lambda: not live.controller.connected)
        accepted = await live.send(kind="notice", regions=["421202104"], text="通知", expires_in=300)
        assert accepted["state"] == "accepted"
        broker = EmbeddedBroker("127.0.0.1", port)
        broker.start()
        await eventually(lambda: live.controller.connected, timeout=40)
        async with live.fleet(specs):
            report = await live.report_when(accepted["id"], lambda r: r["state"] == "finished")
        assert report["counts"]["completed"] == 3
    finally:
        await live.stop()
        broker.stop()


async def test_after_a_restart_only_unfinished_terminals_are_sent_the_alert_again(
    sqlite_url: str, embedded_broker: EmbeddedBroker
) -> None:
    """A rebooted terminal forgets what it played; a region-wide resend would make it play twice."""
    settings = make_settings(sqlite_url, embedded_broker.url)
    async with LiveServer(settings) as first:
        villages = await first.controller.writer.call(lambda s: villages_under(s, "421202106"))
        done, waiting = specs_in([v.code for v in villages], per_village=1)[:2]
        await first.register([done, waiting])
        async with first.fleet([done]):
            accepted = await first.send(
                kind="emergency", level=2, regions=["421202106"], text="x", expires_in=300
            )
            await first.report_when(accepted["id"], lambda r: r["counts"]["completed"] == 1)
    async with LiveServer(settings) as second, second.fleet([done, waiting]) as rebooted:
        report = await second.report_when(accepted["id"], lambda r: r["state"] == "finished")
        assert [t.commands_seen for t in rebooted.terminals] == [0, 1]
    assert report["counts"]["completed"] == 2


async def test_terminal_that_drops_the_first_command_gets_it_again_and_completes(
    sqlite_url: str, embedded_broker: EmbeddedBroker
) -> None:
    settings = make_settings(sqlite_url, embedded_broker.url, retry_after_s=0.3)
    async with LiveServer(settings) as live:
        villages = await live.controller.writer.call(lambda s: villages_under(s, "421202108"))
        deaf, fine = specs_in([v.code for v in villages], per_village=1)[:2]
        await live.register([deaf, fine])
        async with live.fleet([deaf], drop_first_commands=2) as weak, live.fleet([fine]):
            accepted = await live.send(
                kind="emergency", level=1, regions=["421202108"], text="x", expires_in=60
            )
            report = await live.report_when(accepted["id"], lambda r: r["state"] == "finished")
            assert weak.terminals[0].commands_dropped == 2
        retries = metric(await metrics_text(live), "cunxiang_delivery_retries_total")
    assert report["counts"]["completed"] == 2
    assert retries >= 2
