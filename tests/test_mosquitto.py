"""The same alert path on Mosquitto, the production broker (skipped where it is not installed)."""

from controller.regions import villages_under
from tests.conftest import make_settings
from tests.live import LiveServer, specs_in


async def test_township_alert_over_mosquitto_completes_on_every_terminal(
    sqlite_url: str, mosquitto_url: str
) -> None:
    async with LiveServer(make_settings(sqlite_url, mosquitto_url)) as live:
        villages = await live.controller.writer.call(lambda s: villages_under(s, "421202100"))
        specs = specs_in([v.code for v in villages], per_village=2)
        await live.register(specs)
        async with live.fleet(specs):
            accepted = await live.send(
                kind="emergency", level=1, regions=["421202100"], text="地震", expires_in=120
            )
            report = await live.report_when(accepted["id"], lambda r: r["state"] == "finished")
        assert report["counts"]["completed"] == len(specs) == accepted["terminals"]
        assert live.controller.broker is None
