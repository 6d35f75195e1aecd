"""One settings object from CUNXIANG_* variables; a bad one fails at start naming the variable."""

import subprocess
import sys

import pytest

from controller.settings import SettingsError, load_settings


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
        ("CUNXIANG_DATABASE_URL", "mysql://db/cx"),
        ("CUNXIANG_HTTP_PORT", "70000"),
        ("CUNXIANG_TOPIC_PREFIX", "has/slash"),
        ("CUNXIANG_CONTROLLER_ID", "Controller One"),
        ("CUNXIANG_COUNTY_REGION", "42120"),
        ("CUNXIANG_ACK_BATCH_INTERVAL_S", "0"),
        ("CUNXIANG_LOG_LEVEL", "LOUD"),
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
