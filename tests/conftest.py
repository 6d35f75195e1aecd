"""Real parts for tests: an MQTT broker over TCP, a database, a live HTTP server.

- `embedded_broker`: the controller's own embedded broker (amqtt), one per test session, on a free port.
- `mosquitto_url`: a Mosquitto started for the session on a free port (skipped where not installed).
- `writer`: the controller's batched database writer on a fresh `database_url`.
- `database_url`: a fresh SQLite file, and a fresh PostgreSQL database when
  CUNXIANG_TEST_POSTGRES_URL is set (tests using it then run once on each).
Each test gets its own topic prefix and controller id, so tests sharing a broker never see each
other's retained messages.
"""

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlmodel import Session

from controller.db import init_schema, make_engine
from controller.embedded_broker import EmbeddedBroker, free_port
from controller.metrics import Metrics
from controller.models import Region, Terminal
from controller.settings import Settings, load_settings
from controller.writer import DbWriter
from deploy.mosquitto import mosquitto_binary, run_mosquitto, stop_process
from tests.live import LiveServer

POSTGRES_URL = os.environ.get("CUNXIANG_TEST_POSTGRES_URL")
# Media of every test's controller (audio, synthesised speech), out of the working tree.
MEDIA_DIR = Path(tempfile.mkdtemp(prefix="cunxiang-test-media-"))
atexit.register(shutil.rmtree, MEDIA_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker("127.0.0.1", 0)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    config = (
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\npersistence false\n"
    )
    process = run_mosquitto(config, tmp_path_factory.mktemp("mosquitto"), port)
    yield f"mqtt://127.0.0.1:{port}"
    stop_process(process)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cunxiang.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("CUNXIANG_TEST_POSTGRES_URL is not set")
    name = f"cx_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_psycopg(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cunxiang.db'}"


def _psycopg(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def make_settings(database_url: str, broker_url: str, **overrides: object) -> Settings:
    tag = uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "database_url": database_url,
        "mqtt_url": broker_url,
        "controller_id": f"test-{tag}",
        "topic_prefix": f"t{tag}",
        "expiry_sweep_interval_s": 0.2,
        "media_dir": MEDIA_DIR / tag,
        "signing_key_dir": MEDIA_DIR / tag / "keys",
        # Tests of the two-person rule turn it on (tests/test_approval.py); elsewhere a level I/II
        # alert is sent at once, as the tests of delivery expect.
        "approval_levels": [],
        "broadcasts_per_minute": 10_000,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(database_url: str, embedded_broker: EmbeddedBroker) -> Settings:
    return make_settings(database_url, embedded_broker.url)


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[LiveServer]:
    async with LiveServer(settings) as server:
        yield server


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[DbWriter]:
    """A DbWriter on a fresh database with one village and terminals t-1 and t-2 (its loop not running)."""
    engine = make_engine(database_url)
    init_schema(engine)
    with Session(engine) as session:
        session.add(Region(code="421202100001", name="村", level="village", parent_code="421202100"))
        session.add(Terminal(id="t-1", region_code="421202100001"))
        session.add(Terminal(id="t-2", region_code="421202100001"))
        session.commit()
    metrics = Metrics()
    db_writer = DbWriter(engine, metrics, interval=0.01, max_rows=100)
    yield db_writer
    await db_writer.close()
    engine.dispose()
