"""MQTT over TLS on a real Mosquitto, configured with the TLS lines documented in
deploy/mosquitto.conf and the CA and certificates `cunxiang deploy tls` makes: the controller and
simulated terminals talk over it; a client that does not trust the CA, or reaches the broker by a
name its certificate does not carry, is refused; with `require_certificate`, only a client with a
certificate from the CA gets in."""

import getpass
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from controller.embedded_broker import free_port
from deploy.mosquitto import mosquitto_binary, run_mosquitto, stop_process
from devices.broker import BrokerAddress, client_context
from tests.conftest import make_settings
from tests.live import LiveServer, specs_in

CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto.conf"
TLS_OPTIONS = ("listener", "cafile", "certfile", "keyfile", "tls_version", "require_certificate")
VILLAGE = "421202100001"
ISSUE = "--host localhost --client cunxiang --client terminal-1"


@dataclass(frozen=True)
class TlsBroker:
    files: Path
    """what `cunxiang deploy tls --out DIR` + ISSUE wrote"""
    port: int
    """server authentication only"""
    mutual_port: int
    """require_certificate true"""
    log: Path


def documented_listener(port: int, files: Path, mutual: bool) -> str:
    """deploy/mosquitto.conf's commented TLS lines, uncommented, on 127.0.0.1:`port`."""
    lines = [
        line[1:]
        for line in CONF.read_text().splitlines()
        if line.startswith("#") and line[1:].startswith(tuple(o + " " for o in TLS_OPTIONS))
    ]
    assert [line.split()[0] for line in lines] == list(TLS_OPTIONS), "the TLS lines of mosquitto.conf changed"
    if not mutual:
        lines = [line for line in lines if not line.startswith("require_certificate")]
    return (
        "\n".join(lines)
        .replace("listener 8883 0.0.0.0", f"listener {port} 127.0.0.1")
        .replace("/etc/mosquitto/tls/", f"{files}/")
    )


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    files = tmp_path_factory.mktemp("tls")
    made = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "deploy", "tls", "--out", str(files), *ISSUE.split()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert "require_certificate true" in made.stdout
    assert (files / "server.key").stat().st_mode & 0o777 == 0o600
    port, mutual_port = free_port(), free_port()
    config = "\n".join(
        [
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            # Run as whoever runs the tests: as root, Mosquitto would drop to a user who cannot
            # read the keys (0600).
            f"user {getpass.getuser()}",
            documented_listener(port, files, mutual=False),
            documented_listener(mutual_port, files, mutual=True),
            "",
        ]
    )
    workdir = tmp_path_factory.mktemp("mosquitto")
    process = run_mosquitto(config, workdir, port)
    yield TlsBroker(files, port, mutual_port, workdir / "mosquitto.log")
    stop_process(process)


def test_mqtts_url_means_tls_on_port_8883_checking_the_host_name() -> None:
    address = BrokerAddress.from_url("mqtts://cunxiang:pw@broker.county.example")
    assert (address.host, address.port, str(address)) == (
        "broker.county.example",
        8883,
        "mqtts://broker.county.example:8883",
    )
    assert address.tls is not None and address.tls.check_hostname
    assert BrokerAddress.from_url("mqtt://broker.county.example").tls is None


async def test_an_alert_reaches_a_terminal_with_controller_and_terminal_both_over_tls(
    tls_broker: TlsBroker, sqlite_url: str
) -> None:
    settings = make_settings(
        sqlite_url, f"mqtts://localhost:{tls_broker.port}", mqtt_ca_file=tls_broker.files / "ca.crt"
    )
    async with LiveServer(settings) as live:
        assert live.controller.connected
        assert str(live.controller.bus.address).startswith("mqtts://")  # type: ignore[union-attr]
        specs = specs_in([VILLAGE])
        await live.register(specs)
        async with live.fleet(specs):
            accepted = await live.send(kind="notice", regions=[VILLAGE], text="明早停水通知", expires_in=300)
            report = await live.report_when(accepted["id"], lambda r: r["counts"]["completed"] == 1)
    assert report["state"] == "finished"


async def _connect(host: str, port: int, timeout: float = 5, **tls_files: Path) -> None:
    async with aiomqtt.Client(host, port, tls_context=client_context(**tls_files), timeout=timeout) as client:
        await client.publish("tls/check", b"{}", qos=1)


async def test_a_client_that_does_not_trust_the_ca_is_refused(tls_broker: TlsBroker) -> None:
    # The default context trusts only the system's store, where a private CA is not.
    with pytest.raises(aiomqtt.MqttError, match="certificate verify failed"):
        await _connect("localhost", tls_broker.port)


async def test_a_broker_certificate_for_another_name_is_refused(tls_broker: TlsBroker) -> None:
    # Trusted CA, but the certificate names localhost only.
    with pytest.raises(aiomqtt.MqttError, match="mismatch"):
        await _connect("127.0.0.1", tls_broker.port, ca_file=tls_broker.files / "ca.crt")


async def test_mutual_tls_refuses_a_client_without_a_certificate(tls_broker: TlsBroker) -> None:
    # Over TLS 1.3 the client finishes its side of the handshake before the broker refuses it; paho
    # then waits for a CONNACK that never comes. The broker's log says why.
    with pytest.raises(aiomqtt.MqttError):
        await _connect("localhost", tls_broker.mutual_port, timeout=2, ca_file=tls_broker.files / "ca.crt")
    assert "peer did not return a certificate" in tls_broker.log.read_text()


async def test_mutual_tls_admits_the_controller_with_a_client_certificate_from_deploy_tls(
    tls_broker: TlsBroker, sqlite_url: str
) -> None:
    files = tls_broker.files
    settings = make_settings(
        sqlite_url,
        f"mqtts://localhost:{tls_broker.mutual_port}",
        mqtt_ca_file=files / "ca.crt",
        mqtt_cert_file=files / "cunxiang.crt",
        mqtt_key_file=files / "cunxiang.key",
    )
    async with LiveServer(settings) as live:
        assert live.controller.connected
    await _connect(
        "localhost",
        tls_broker.mutual_port,
        ca_file=files / "ca.crt",
        cert_file=files / "terminal-1.crt",
        key_file=files / "terminal-1.key",
    )
