"""`cunxiang agent` as a real process against a real broker, with stub player and speech commands
that record what they were asked to do (so neither a sound card nor eSpeak NG is needed)."""

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.embedded_broker import EmbeddedBroker, free_port
from deploy.mosquitto import mosquitto_binary, run_mosquitto, stop_process
from devices.agent.readings import host_readings
from devices.messages import (
    Ack,
    AckReason,
    AckStage,
    BroadcastStatus,
    Presence,
    Supply,
    TerminalStatus,
    announcement,
)
from devices.messages import decode as decode_message
from devices.signing import Signer
from devices.topics import TopicScheme
from tests.builders import TEST_KEYS, make_command, make_content, signed, tone
from tests.conftest import make_settings
from tests.live import LiveServer, eventually
from tests.processes import clean_env, cunxiang, follow

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = "agent-421202100001-1"
VILLAGE = "421202100001"

PLAYER = """
import hashlib, json, sys, time
log, path = sys.argv[1], sys.argv[2]
with open(path, "rb") as audio:
    digest = hashlib.sha256(audio.read()).hexdigest()
with open(log, "a") as out:
    out.write(json.dumps({"sha256": digest, "args": sys.argv[2:]}) + "\\n")
time.sleep(0.2)
"""

# Writes a WAV whose samples are the text's bytes, so each text has its own checksum.
TTS = """
import hashlib, json, sys, wave
log, voice, path = sys.argv[1:4]
text = sys.stdin.read()
samples = text.encode() * 50
with wave.open(path, "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(1)
    out.setframerate(8000)
    out.writeframes(samples)
with open(path, "rb") as audio:
    digest = hashlib.sha256(audio.read()).hexdigest()
with open(log, "a") as out:
    out.write(json.dumps({"text": text, "voice": voice, "sha256": digest}) + "\\n")
"""


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class Terminal:
    """A terminal's files in a temporary directory, and its agent process when running."""

    directory: Path
    broker: str
    keyset: Path
    password: str | None = None
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)

    @property
    def played(self) -> list[dict[str, Any]]:
        return records(self.directory / "played.log")

    @property
    def spoken(self) -> list[dict[str, Any]]:
        return records(self.directory / "spoken.log")

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def write_config(self, prefix: str) -> Path:
        (self.directory / "player.py").write_text(PLAYER, encoding="utf-8")
        (self.directory / "tts.py").write_text(TTS, encoding="utf-8")
        player = [
            sys.executable,
            str(self.directory / "player.py"),
            str(self.directory / "played.log"),
            "{file}",
        ]
        tts = [sys.executable, str(self.directory / "tts.py"), str(self.directory / "spoken.log")]
        lines = {
            "terminal_id": TERMINAL,
            "region": VILLAGE,
            "topic_prefix": prefix,
            "broker": self.broker,
            "keyset": str(self.keyset),
            "state_dir": "state",
            "heartbeat_interval_s": 5,
            "tts": [*tts, "{voice}", "{file}"],
        }
        if self.password is not None:
            (self.directory / "password").write_text(self.password + "\n", encoding="utf-8")
            lines["password_file"] = "password"
        text = "".join(f"{key} = {json.dumps(value)}\n" for key, value in lines.items())
        text += f"\n[player]\nwav = {json.dumps(player)}\n"
        path = self.directory / "terminal.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def start(self, prefix: str) -> None:
        config = self.write_config(prefix)
        self.process = cunxiang("agent", "--config", str(config), env=clean_env(), cwd=str(ROOT))
        self.output = follow(self.process)

    def kill(self) -> None:
        """A power cut: no goodbye."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("the agent did not stop on SIGTERM:\n" + "".join(self.output)) from None

    def log(self) -> str:
        return "".join(self.output)


class Watch:
    """A client of the broker recording what the terminal publishes."""

    def __init__(self, client: aiomqtt.Client, topics: TopicScheme) -> None:
        self.acks: list[Ack] = []
        self.statuses: list[TerminalStatus] = []
        self._client = client
        self._topics = topics

    async def run(self) -> None:
        await self._client.subscribe(self._topics.terminal_ack(TERMINAL), qos=1)
        await self._client.subscribe(self._topics.terminal_status(TERMINAL), qos=1)
        async for message in self._client.messages:
            if str(message.topic).endswith("/ack"):
                self.acks.append(decode_message(Ack, bytes(message.payload)))
            else:
                self.statuses.append(decode_message(TerminalStatus, bytes(message.payload)))

    def stages(self, command_id: str) -> list[tuple[AckStage, AckReason | None]]:
        return [(a.stage, a.reason) for a in self.acks if a.command_id == command_id]

    def online(self, after_session: int = -1) -> bool:
        return any(s.state is Presence.ONLINE and s.session > after_session for s in self.statuses)


async def until(check: Callable[[], bool], terminal: Terminal, timeout: float = 15) -> None:
    """`eventually`, failing with the agent's output."""
    try:
        await eventually(check, timeout)
    except AssertionError:
        raise AssertionError("condition not met; the agent said:\n" + terminal.log()) from None


# --- through the real controller, on its broker ---------------------------------------------


@pytest.fixture
async def live(sqlite_url: str, embedded_broker: EmbeddedBroker) -> AsyncIterator[LiveServer]:
    # Text alerts go as text (no speech added by the controller), for the agent to speak.
    server = LiveServer(make_settings(sqlite_url, embedded_broker.url, speak_alerts=False))
    # Commands name their audio at the controller's public URL: this server's.
    server.settings.public_url = f"http://127.0.0.1:{server.port}"
    async with server:
        yield server


@pytest.fixture
async def registered(live: LiveServer, tmp_path: Path) -> AsyncIterator[Terminal]:
    answer = await live.http.post("/api/v1/terminals", json=[{"id": TERMINAL, "region": VILLAGE}])
    assert answer.status_code == 200, answer.text
    secret = answer.json()["credentials"][0]["secret"]
    terminal = Terminal(tmp_path, live.settings.mqtt_url or "", live.controller.keys.keyset_path, secret)
    yield terminal
    if terminal.process is not None:
        assert terminal.stop() == 0, terminal.log()


async def started(live: LiveServer, terminal: Terminal) -> None:
    terminal.start(live.settings.topic_prefix)
    await until(lambda: live.controller.presence_of(TERMINAL) == "online", terminal)


async def test_a_programme_is_downloaded_resuming_a_partial_file_checked_and_played(
    live: LiveServer, registered: Terminal
) -> None:
    audio = tone()
    upload = await live.http.post(
        "/api/v1/programmes/upload", data={"title": "提示音"}, files={"file": ("t.wav", audio)}
    )
    assert upload.status_code == 201, upload.text
    programme = upload.json()
    # Half of it was downloaded before the link dropped: the agent asks for the rest only.
    (registered.state_dir / "audio").mkdir(parents=True)
    (registered.state_dir / "audio" / f"{programme['media_sha256']}.part").write_bytes(
        audio[: len(audio) // 2]
    )
    await started(live, registered)

    sent = await live.send(kind="programme", regions=[VILLAGE], programme_id=programme["id"], expires_in=60)
    report = await live.report_when(sent["id"], lambda r: r["state"] == "finished")

    assert report["counts"]["completed"] == 1, registered.log()
    assert [p["sha256"] for p in registered.played] == [programme["media_sha256"]]
    assert registered.spoken == []


async def test_audio_that_does_not_match_its_checksum_is_not_played(
    live: LiveServer, registered: Terminal
) -> None:
    audio = tone()
    upload = await live.http.post(
        "/api/v1/programmes/upload", data={"title": "提示音"}, files={"file": ("t.wav", audio)}
    )
    programme = upload.json()
    # A first half that went bad on the card: the download resumes after it, and the whole fails.
    (registered.state_dir / "audio").mkdir(parents=True)
    (registered.state_dir / "audio" / f"{programme['media_sha256']}.part").write_bytes(bytes(len(audio) // 2))
    await started(live, registered)

    sent = await live.send(kind="programme", regions=[VILLAGE], programme_id=programme["id"], expires_in=60)
    report = await live.report_when(sent["id"], lambda r: r["state"] == "finished")

    assert report["counts"]["failed"] == 1, report
    assert registered.played == []
    assert not (registered.state_dir / "audio" / f"{programme['media_sha256']}.part").exists()


async def test_a_text_exercise_is_announced_as_a_drill_then_spoken_repeat_times(
    live: LiveServer, registered: Terminal
) -> None:
    await started(live, registered)
    text = "陆水河上游水库泄洪，请沿河群众按演练路线转移。"
    sent = await live.send(
        kind="emergency", level=4, regions=[VILLAGE], text=text, status="exercise", repeat=2, expires_in=60
    )
    report = await live.report_when(sent["id"], lambda r: r["state"] == "finished")

    assert report["counts"]["completed"] == 1, registered.log()
    said = {s["sha256"]: s["text"] for s in registered.spoken}
    drill = announcement(BroadcastStatus.EXERCISE, "zh-CN")
    assert [said[p["sha256"]] for p in registered.played] == [drill, text, text]
    assert {s["voice"] for s in registered.spoken} == {"cmn"}


async def test_forged_and_unsigned_commands_are_refused_with_the_reason_and_not_played(
    live: LiveServer, registered: Terminal
) -> None:
    await started(live, registered)
    broker = live.controller.bus
    assert broker is not None
    now = datetime.now(UTC)
    impostor = Signer(live.controller.keys.signer(now).kid, Ed25519PrivateKey.generate())
    forged = impostor.sign(make_command("forged-00000001", issued_at=now), now)
    unsigned = make_command("unsigned-0000001", issued_at=now)
    async with (
        aiomqtt.Client(broker.address.host, broker.address.port) as spy,
        aiomqtt.Client(broker.address.host, broker.address.port) as attacker,
    ):
        watch = Watch(spy, live.topics)
        watching = asyncio.create_task(watch.run())
        await asyncio.sleep(0.2)
        for message in (forged, unsigned):
            payload = message.model_dump_json(exclude_none=True).encode()
            await attacker.publish(live.topics.region_command(VILLAGE), payload, qos=1)
        await until(lambda: len(watch.acks) == 2, registered)
        watching.cancel()

    assert watch.stages("forged-00000001") == [(AckStage.REJECTED, AckReason.BAD_SIGNATURE)]
    assert watch.stages("unsigned-0000001") == [(AckStage.REJECTED, AckReason.UNSIGNED)]
    assert registered.played == [] and registered.spoken == []


# --- on a Mosquitto the test stops and starts, commands signed with the test key --------------


@dataclass
class Broker:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        self.process = run_mosquitto(config, self.workdir, self.port)

    def stop(self) -> None:
        assert self.process is not None
        stop_process(self.process)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    broker = Broker(free_port(), workdir)
    broker.start()
    yield broker
    broker.stop()


TOPICS = TopicScheme("agenttest")


@pytest.fixture
async def away(mosquitto: Broker, tmp_path: Path) -> AsyncIterator[Terminal]:
    keyset = tmp_path / "keyset.json"
    keyset.write_text(TEST_KEYS.model_dump_json(), encoding="utf-8")
    terminal = Terminal(tmp_path, mosquitto.url, keyset)
    yield terminal
    if terminal.process is not None:
        assert terminal.stop() == 0, terminal.log()


def command(command_id: str, text: str, lasts: timedelta = timedelta(minutes=5)) -> bytes:
    """A command as the controller would send it now (signed with the test key)."""
    now = datetime.now(UTC)
    return signed(
        make_command(command_id, issued_at=now, expires_in=lasts, content=make_content(text=text)), now
    )


@pytest.fixture
async def watch(mosquitto: Broker) -> AsyncIterator[Watch]:
    """What the terminal publishes, seen by a client of the broker for the whole test."""
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        watching = Watch(client, TOPICS)
        task = asyncio.create_task(watching.run())
        yield watching
        task.cancel()


async def publish(broker: Broker, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish(TOPICS.terminal_command(TERMINAL), payload, qos=1)


async def test_after_a_broker_outage_the_agent_comes_back_and_plays_what_is_sent(
    mosquitto: Broker, away: Terminal
) -> None:
    away.start(TOPICS.prefix)
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        before = Watch(client, TOPICS)
        task = asyncio.create_task(before.run())
        await until(before.online, away)
        task.cancel()
    first_session = before.statuses[-1].session

    mosquitto.stop()
    await asyncio.sleep(0.5)
    mosquitto.start()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        after = Watch(client, TOPICS)
        task = asyncio.create_task(after.run())
        await until(lambda: after.online(after_session=first_session), away)
        await publish(mosquitto, command("after-outage-1", "恢复后的通知"))
        await until(lambda: (AckStage.COMPLETED, None) in after.stages("after-outage-1"), away)
        task.cancel()
    assert [s["text"] for s in away.spoken] == ["恢复后的通知"]
    assert len(away.played) == 1


async def test_commands_queued_while_away_are_played_after_it_returns_unless_expired(
    mosquitto: Broker, away: Terminal, watch: Watch
) -> None:
    away.start(TOPICS.prefix)
    await until(watch.online, away)
    away.kill()  # its persistent session stays on the broker, which queues what is sent meanwhile
    await publish(mosquitto, command("still-valid-1", "明早停水", lasts=timedelta(minutes=5)))
    await publish(mosquitto, command("short-lived-1", "十秒后失效", lasts=timedelta(seconds=1)))
    await asyncio.sleep(1.2)

    away.start(TOPICS.prefix)
    await until(lambda: (AckStage.COMPLETED, None) in watch.stages("still-valid-1"), away)
    await until(lambda: bool(watch.stages("short-lived-1")), away)

    assert watch.stages("short-lived-1") == [(AckStage.REJECTED, AckReason.EXPIRED)]
    assert [s["text"] for s in away.spoken] == ["明早停水"]
    assert len(away.played) == 1


async def test_a_command_played_before_a_power_cut_is_not_played_again_after_it(
    mosquitto: Broker, away: Terminal, watch: Watch
) -> None:
    away.start(TOPICS.prefix)
    await until(watch.online, away)
    payload = command("before-cut-01", "今晚八点开会")
    await publish(mosquitto, payload)
    await until(lambda: (AckStage.COMPLETED, None) in watch.stages("before-cut-01"), away)
    away.kill()

    away.start(TOPICS.prefix)
    await until(lambda: watch.online(after_session=watch.statuses[0].session), away)
    await publish(mosquitto, payload)  # the same signed copy, still within the window
    await until(lambda: len(watch.stages("before-cut-01")) == 4, away)

    assert watch.stages("before-cut-01")[-1] == (AckStage.COMPLETED, None)
    assert len(away.played) == 1
    assert (away.state_dir / "answered.json").exists()


async def test_sigterm_says_goodbye_and_exits_0(mosquitto: Broker, away: Terminal, watch: Watch) -> None:
    away.start(TOPICS.prefix)
    await until(watch.online, away)
    assert away.stop() == 0
    await until(lambda: watch.statuses[-1].state is Presence.OFFLINE, away)


def test_heartbeat_readings_come_from_proc_and_sys(tmp_path: Path) -> None:
    files = {
        "proc/uptime": "12345.67 40000.00\n",
        "sys/class/thermal/thermal_zone0/temp": "48250\n",
        "sys/class/power_supply/BAT0/type": "Battery\n",
        "sys/class/power_supply/BAT0/capacity": "87\n",
        "sys/class/power_supply/BAT0/status": "Discharging\n",
        "sys/class/power_supply/AC/type": "Mains\n",
        "sys/class/power_supply/AC/online": "0\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="ascii")
    assert host_readings(tmp_path) == {
        "uptime_s": 12345,
        "temperature_c": 48.2,
        "battery_pct": 87,
        "supply": Supply.BATTERY,
    }
    assert host_readings(tmp_path / "nothing-here") == {}
