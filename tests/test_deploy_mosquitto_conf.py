"""deploy/mosquitto.conf with the password file and ACL that `cunxiang deploy mosquitto-acl` writes
from the registry, on a real Mosquitto: the controller logs in; each terminal logs in as itself and
may only read its own and its regions' commands and write its own reports."""

import asyncio
import contextlib
import getpass
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from sqlmodel import Session

from controller.credentials import mosquitto_hash, new_secret
from controller.db import init_schema, make_engine
from controller.embedded_broker import free_port
from controller.regions import ensure_bundled_regions
from controller.settings import Settings
from controller.terminals import TerminalSpec, decommission, register_terminals
from deploy.mosquitto import mosquitto_binary, run_mosquitto, stop_process
from devices.messages import now_utc
from tests.conftest import make_settings
from tests.live import LiveServer

CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto.conf"
VILLAGE = "421202100001"


@dataclass
class Deployment:
    host: str
    port: int
    settings: Settings
    secrets: dict[str, str]


def _register(settings: Settings, terminal_ids: list[str], retired: str) -> dict[str, str]:
    secrets = {terminal_id: new_secret() for terminal_id in terminal_ids}
    engine = make_engine(settings.database_url)
    init_schema(engine)
    with Session(engine) as session:
        ensure_bundled_regions(session)
        specs = [TerminalSpec(id=terminal_id, region=VILLAGE) for terminal_id in terminal_ids]
        hashes = {terminal_id: mosquitto_hash(secret) for terminal_id, secret in secrets.items()}
        register_terminals(session, specs, hashes, now_utc())
        decommission(session, retired, now_utc())
    engine.dispose()
    return secrets


@pytest.fixture
async def deployment(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Deployment]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    settings = make_settings(sqlite_url, f"mqtt://cunxiang:s3cret%2F%C3%A4@127.0.0.1:{port}")
    secrets = _register(settings, ["t-1", "t-2", "t-retired"], retired="t-retired")
    env = dict(
        os.environ,
        CUNXIANG_DATABASE_URL=settings.database_url,
        CUNXIANG_MQTT_URL=settings.mqtt_url or "",
        CUNXIANG_TOPIC_PREFIX=settings.topic_prefix,
    )
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "deploy.cli", "deploy", "mosquitto-acl", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    assert "the controller and 2 terminals" in made.stdout
    conf = (
        CONF.read_text()
        .replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1")
        .replace("/etc/mosquitto/", f"{tmp_path}/")
        .replace("/var/lib/mosquitto/", f"{tmp_path}/")
        .replace("log_dest syslog", "log_dest stderr")
        # Run as whoever runs the tests: as root, Mosquitto would drop to a user who cannot read tmp_path.
        + f"\nuser {getpass.getuser()}\n"
    )
    process = run_mosquitto(conf, tmp_path, port)
    yield Deployment("127.0.0.1", port, settings, secrets)
    stop_process(process)


async def test_controller_logs_in_to_the_deployed_config_with_a_password(deployment: Deployment) -> None:
    async with LiveServer(deployment.settings) as live:
        assert live.controller.connected


async def test_anonymous_client_is_refused_by_the_deployed_config(
    deployment: Deployment, tmp_path: Path
) -> None:
    anonymous = make_settings(f"sqlite:///{tmp_path / 'other.db'}", f"mqtt://127.0.0.1:{deployment.port}")
    async with LiveServer(anonymous) as live:
        assert not live.controller.connected
        assert (await live.http.get("/healthz")).status_code == 503


async def _heard(client: aiomqtt.Client, into: list[str]) -> None:
    with contextlib.suppress(aiomqtt.MqttError):
        async for message in client.messages:
            into.append(str(message.topic))


async def test_a_terminal_reads_only_its_commands_and_speaks_only_for_itself(deployment: Deployment) -> None:
    topics = deployment.settings.topics
    controller_heard: list[str] = []
    terminal_heard: list[str] = []
    neighbour_heard: list[str] = []
    async with (
        aiomqtt.Client(
            deployment.host, deployment.port, username="cunxiang", password="s3cret/ä"
        ) as controller,
        aiomqtt.Client(
            deployment.host, deployment.port, username="t-1", password=deployment.secrets["t-1"]
        ) as terminal,
        aiomqtt.Client(
            deployment.host, deployment.port, username="t-2", password=deployment.secrets["t-2"]
        ) as neighbour,
    ):
        for topic in topics.controller_subscriptions():
            await controller.subscribe(topic, qos=1)
        for topic in topics.terminal_subscriptions("t-2", VILLAGE):
            await neighbour.subscribe(topic, qos=1)
        # Mosquitto grants a subscription the ACL refuses, then delivers nothing on it.
        for topic in (
            topics.terminal_command("t-1"),
            topics.region_command("421202"),
            topics.terminal_command("t-2"),
        ):
            await terminal.subscribe(topic, qos=1)
        listening = [
            asyncio.create_task(_heard(controller, controller_heard)),
            asyncio.create_task(_heard(terminal, terminal_heard)),
            asyncio.create_task(_heard(neighbour, neighbour_heard)),
        ]
        for topic in (
            topics.terminal_command("t-1"),
            topics.region_command("421202"),
            topics.terminal_command("t-2"),
        ):
            await controller.publish(topic, b"{}", qos=1)
        for topic in (
            topics.region_command(VILLAGE),  # a forged command to the village
            topics.terminal_command("t-2"),  # or to another terminal
            topics.terminal_ack("t-2"),  # another terminal's acknowledgement
            topics.terminal_status("t-2"),
            topics.terminal_ack("t-1"),  # its own: allowed
        ):
            await terminal.publish(topic, b"{}", qos=1)
        await asyncio.sleep(1.0)
        for task in listening:
            task.cancel()
    assert terminal_heard == [topics.terminal_command("t-1"), topics.region_command("421202")]
    assert controller_heard == [topics.terminal_ack("t-1")]
    # t-2 heard the controller's commands, and neither of the ones t-1 forged.
    assert neighbour_heard == [topics.region_command("421202"), topics.terminal_command("t-2")]


@pytest.mark.parametrize(("username", "which"), [("t-1", "wrong secret"), ("t-retired", "decommissioned")])
async def test_a_terminal_without_valid_credentials_cannot_log_in(
    deployment: Deployment, username: str, which: str
) -> None:
    secret = "not-its-secret" if which == "wrong secret" else deployment.secrets["t-retired"]
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(deployment.host, deployment.port, username=username, password=secret):
            pass
