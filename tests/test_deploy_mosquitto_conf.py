"""deploy/mosquitto.conf is a working Mosquitto configuration, and the controller logs in to it."""

import getpass
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.embedded_broker import free_port
from deploy.mosquitto import mosquitto_binary, run_mosquitto, stop_process
from tests.conftest import make_settings
from tests.live import LiveServer

CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto.conf"


@pytest.fixture
def deployed_mosquitto(tmp_path: Path) -> Iterator[tuple[str, int]]:
    if mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    passwords = tmp_path / "cunxiang.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "cunxiang", "s3cret/ä"], check=True)
    conf = (
        CONF.read_text()
        .replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
        .replace("/etc/mosquitto/cunxiang.passwd", str(passwords))
        .replace("/var/lib/mosquitto/", f"{tmp_path}/")
        .replace("log_dest syslog", "log_dest stderr")
        # Run as whoever runs the tests: as root, Mosquitto would drop to a user who cannot read tmp_path.
        + f"\nuser {getpass.getuser()}\n"
    )
    process = run_mosquitto(conf, tmp_path, port)
    yield "127.0.0.1", port
    stop_process(process)


async def test_controller_logs_in_to_the_deployed_config_with_a_password(
    deployed_mosquitto: tuple[str, int], sqlite_url: str
) -> None:
    host, port = deployed_mosquitto
    async with LiveServer(
        make_settings(sqlite_url, f"mqtt://cunxiang:s3cret%2F%C3%A4@{host}:{port}")
    ) as live:
        assert live.controller.connected


async def test_anonymous_client_is_refused_by_the_deployed_config(
    deployed_mosquitto: tuple[str, int], sqlite_url: str
) -> None:
    host, port = deployed_mosquitto
    async with LiveServer(make_settings(sqlite_url, f"mqtt://{host}:{port}")) as live:
        assert not live.controller.connected
        assert (await live.http.get("/healthz")).status_code == 503
