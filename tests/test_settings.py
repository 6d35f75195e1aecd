"""One settings object from CUNXIANG_* variables; a bad one fails at start naming the variable."""

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from controller.settings import SettingsError, load_settings
from deploy.tls import new_authority


def test_defaults_run_on_a_sqlite_file_and_an_embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUNXIANG_MQTT_URL", raising=False)
    monkeypatch.delenv("CUNXIANG_DATABASE_URL", raising=False)
    settings = load_settings()
    assert settings.database_url == "sqlite:///./cunxiang.db"
    assert settings.mqtt_url is None and settings.embedded_broker


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUNXIANG_MQTT_URL", "mqtt://user:secret@broker.example:1884")
    monkeypatch.setenv("CUNXIANG_DATABASE_URL", "postgresql://cx@db.example/cunxiang")
    settings = load_settings()
    assert settings.mqtt_url == "mqtt://user:secret@broker.example:1884"
    assert not settings.embedded_broker


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CUNXIANG_MQTT_URL", "http://broker:1883"),
        ("CUNXIANG_MQTT_URL", "mqtt://broker:notaport"),
        ("CUNXIANG_MQTT_URL", "ssl://broker:8883"),
        ("CUNXIANG_MQTT_URL", "mqtts://:8883"),
        ("CUNXIANG_DATABASE_URL", "mysql://db/cx"),
        ("CUNXIANG_HTTP_PORT", "70000"),
        ("CUNXIANG_TOPIC_PREFIX", "has/slash"),
        ("CUNXIANG_CONTROLLER_ID", "Controller One"),
        ("CUNXIANG_COUNTY_REGION", "42120"),
        ("CUNXIANG_ACK_BATCH_INTERVAL_S", "0"),
        ("CUNXIANG_LOG_LEVEL", "LOUD"),
        ("CUNXIANG_CAP_SENDER", "xianan yjgb"),
        ("CUNXIANG_CAP_SENDER", "xianan,yjgb"),
    ],
)
def test_invalid_setting_is_refused_with_a_message_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith(f"invalid setting {variable}:")
    assert message.count("\n") == 0


def test_the_cap_sender_defaults_to_one_naming_the_county(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUNXIANG_CAP_SENDER", raising=False)
    monkeypatch.setenv("CUNXIANG_COUNTY_REGION", "421221")

    assert load_settings().cap_sender == "cunxiang-421221"


def test_cunxiang_command_exits_2_with_one_clear_line_on_a_bad_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "serve"],
        env={"CUNXIANG_MQTT_URL": "ftp://nowhere", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("invalid setting CUNXIANG_MQTT_URL:")


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.crt"
    authority = new_authority(datetime.datetime.now(datetime.UTC))
    path.write_bytes(authority.certificate.public_bytes(Encoding.PEM))
    return path


def test_mqtts_url_with_a_ca_file_is_accepted(monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> None:
    monkeypatch.setenv("CUNXIANG_MQTT_URL", "mqtts://cunxiang:pw@broker.example")
    monkeypatch.setenv("CUNXIANG_MQTT_CA_FILE", str(ca_file))
    settings = load_settings()
    assert settings.mqtt_url == "mqtts://cunxiang:pw@broker.example"
    assert settings.mqtt_ca_file == ca_file


@pytest.mark.parametrize(
    ("variable", "content", "why"),
    [
        ("CUNXIANG_MQTT_CA_FILE", None, "cannot be read as PEM CA certificates: No such file or directory"),
        ("CUNXIANG_MQTT_CA_FILE", b"not a certificate", "cannot be read as PEM CA certificates"),
        ("CUNXIANG_MQTT_CERT_FILE", None, "cannot be read: No such file or directory"),
        ("CUNXIANG_MQTT_KEY_FILE", b"", "is the key of CUNXIANG_MQTT_CERT_FILE, which is not set"),
    ],
)
def test_an_unusable_tls_file_is_refused_saying_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, content: bytes | None, why: str
) -> None:
    path = tmp_path / "file.pem"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("CUNXIANG_MQTT_URL", "mqtts://broker.example")
    monkeypatch.setenv(variable, str(path))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith(f"invalid setting {variable}: Value error, {why}")


def test_a_client_certificate_without_its_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path
) -> None:
    monkeypatch.setenv("CUNXIANG_MQTT_URL", "mqtts://broker.example")
    monkeypatch.setenv("CUNXIANG_MQTT_CERT_FILE", str(ca_file))  # a certificate, but no key in it
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith(
        "invalid setting CUNXIANG_MQTT_KEY_FILE: Value error, is not set, and there is no key in "
        "CUNXIANG_MQTT_CERT_FILE"
    )


def test_a_ca_file_with_a_plain_mqtt_url_is_refused(monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> None:
    # Someone setting a CA believes the link is encrypted; over mqtt:// it would not be.
    monkeypatch.setenv("CUNXIANG_MQTT_URL", "mqtt://broker.example")
    monkeypatch.setenv("CUNXIANG_MQTT_CA_FILE", str(ca_file))
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "CUNXIANG_MQTT_URL is not mqtts://" in str(raised.value)


@pytest.mark.parametrize(
    ("feeds", "why"),
    [
        ('[{"name": "w", "source": "/a"}, {"name": "w", "source": "/b"}]', "two feeds have the same name"),
        (
            '[{"name": "w", "source": "/a", "region": "421203"}]',
            "feed w: region 421203 is not a region within",
        ),
        ('[{"name": "w x", "source": "/a"}]', "String should match pattern"),
        ('[{"name": "w", "url": "/a"}]', "Field required"),
    ],
)
def test_a_bad_cap_feed_is_refused_saying_why(monkeypatch: pytest.MonkeyPatch, feeds: str, why: str) -> None:
    monkeypatch.setenv("CUNXIANG_CAP_FEEDS", feeds)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "invalid setting CUNXIANG_CAP_FEEDS" in str(raised.value) and why in str(raised.value)


def test_cap_feeds_are_read_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "CUNXIANG_CAP_FEEDS",
        '[{"name": "weather", "source": "https://x.example/cap.atom", "region": "421202104"}]',
    )
    (feed,) = load_settings().cap_feeds
    assert (feed.name, feed.source, feed.region) == ("weather", "https://x.example/cap.atom", "421202104")
