"""The one settings object, read from `CUNXIANG_*` environment variables (and `.env`)."""

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller.cap.model import is_cap_token
from controller.cap.rules import (
    DEFAULT_ADMIN_GEOCODE_NAMES,
    DEFAULT_LANGUAGES,
    DEFAULT_LEVEL_RULES,
    CapFeed,
    CapRules,
    LevelRule,
)
from devices.broker import TLS_SCHEME, client_context, is_tls_url_scheme
from devices.identifiers import is_region_code, is_terminal_id
from devices.topics import TopicScheme

ENV_PREFIX = "CUNXIANG_"


class Settings(BaseSettings):
    """Everything a deployment can change. Defaults run a whole county on one machine."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./cunxiang.db"
    mqtt_url: str | None = Field(
        default=None,
        description="mqtt://[user:password@]host[:port] of the broker (mqtts:// for TLS, port 8883 by "
        "default); unset starts an embedded broker",
    )
    mqtt_ca_file: Path | None = None
    """the CA certificates (PEM) an mqtts:// broker's certificate must chain to; default the system's"""
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = Field(default=None, validate_default=True)
    """the controller's client certificate and its key (PEM), for a broker requiring mutual TLS; the
    key may instead be in the certificate's file"""
    embedded_broker_host: str = "127.0.0.1"
    embedded_broker_port: Annotated[int, Field(ge=0, le=65535)] = 1883
    topic_prefix: str = "cx"
    controller_id: str = "controller-1"
    county_region: str = "421202"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    ack_batch_max: Annotated[int, Field(ge=1, le=100_000)] = 500
    ack_batch_interval_s: Annotated[float, Field(gt=0, le=10)] = 0.05
    expiry_sweep_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    retry_after_s: Annotated[float, Field(gt=0, le=600)] = 3.0
    retry_max_interval_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_expires_in_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    mqtt_keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    ack_clock_tolerance_s: Annotated[int, Field(ge=1)] = 3600
    """an acknowledgement stamped further than this from the controller's clock is ignored as absurd"""
    heartbeat_misses: Annotated[int, Field(ge=1, le=100)] = 3
    """a terminal silent for this many of its heartbeat intervals is offline"""
    flap_changes: Annotated[int, Field(ge=2, le=1000)] = 5
    flap_window_s: Annotated[int, Field(ge=10)] = 600
    """this many presence changes within this window is flapping"""
    fault_low_signal_dbm: Annotated[int, Field(ge=-150, le=0)] = -105
    fault_high_temperature_c: Annotated[float, Field(ge=0, le=150)] = 70.0
    telemetry_sample_s: Annotated[int, Field(ge=1, le=86_400)] = 300
    """at most one telemetry sample per terminal this often is kept (heartbeats come every ~30 s)"""
    telemetry_keep_days: Annotated[int, Field(ge=1, le=3650)] = 30
    """telemetry samples older than this are deleted"""
    signing_key_dir: Path = Path("keys")
    """the controller's command-signing keys and the public key set terminals are given
    (`keyset.json`); every controller process of a deployment uses the same keys"""
    media_dir: Path = Path("media")
    """where programme audio and synthesised speech are kept"""
    public_url: str | None = None
    """the controller's address as terminals reach it, for audio downloads; default http://HOST:PORT"""
    max_upload_bytes: Annotated[int, Field(ge=1024)] = 50 * 1024 * 1024
    tts_command: str | None = None
    """the eSpeak NG program (default: espeak-ng on PATH)"""
    speak_alerts: bool = True
    """add the offline engine's speech to broadcasts that carry only text"""
    timezone: str = "Asia/Shanghai"
    """the county's time zone, the default for schedules"""
    auth_secret: SecretStr | None = None
    """the key signing access tokens; default a random one kept in the database, shared by every
    controller process using it"""
    access_token_ttl_s: Annotated[int, Field(ge=60, le=86_400)] = 900
    refresh_token_ttl_s: Annotated[int, Field(ge=300, le=30 * 86_400)] = 12 * 3600
    """one shift: after this long without refreshing, sign in again"""
    approval_levels: list[Annotated[int, Field(ge=1, le=4)]] = [1, 2]
    """emergency levels whose live (`actual`) broadcasts wait for a second person's approval"""
    approval_timeout_s: Annotated[int, Field(ge=5, le=86_400)] = 900
    """a broadcast awaiting approval for this long lapses (`approval_expired`)"""
    login_failures_max: Annotated[int, Field(ge=1, le=1000)] = 5
    """failed sign-ins of one username within the window before it is refused for a while (429)"""
    login_failures_per_source: Annotated[int, Field(ge=1, le=100_000)] = 50
    """failed sign-ins from one address within the window (guessing across usernames)"""
    login_failure_window_s: Annotated[int, Field(ge=10, le=86_400)] = 900
    broadcasts_per_minute: Annotated[int, Field(ge=1, le=10_000)] = 30
    """broadcasts one account or API key may create a minute (429 beyond)"""
    max_request_bytes: Annotated[int, Field(ge=1024)] = 2 * 1024 * 1024
    """largest request body (uploads: CUNXIANG_MAX_UPLOAD_BYTES)"""
    cap_max_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 1024 * 1024
    """largest CAP message taken in, checked before it is parsed (embedded audio counts)"""
    cap_level_rules: Annotated[tuple[LevelRule, ...], Field(min_length=1)] = DEFAULT_LEVEL_RULES
    """CAP severity/urgency/certainty → emergency level or notice, first matching row wins (docs/cap.md)"""
    cap_languages: tuple[str, ...] = DEFAULT_LANGUAGES
    """which CAP info block to broadcast, by language, in order of preference"""
    cap_geocodes: dict[str, dict[str, list[str]]] = {}
    """CAP geocode valueName → value → our region codes"""
    cap_admin_geocode_names: frozenset[str] = DEFAULT_ADMIN_GEOCODE_NAMES
    """CAP geocode valueNames whose values are administrative division codes, used directly"""
    cap_default_expires_s: Annotated[int, Field(ge=60)] = 3600
    """how long a CAP alert without `expires` is broadcast for"""
    cap_fetch_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    """how long fetching a CAP message's audio, or a feed, may take at each step"""
    cap_feeds: tuple[CapFeed, ...] = ()
    """sources the CAP poller reads, JSON: [{"name": "weather", "source": "https://…/cap.atom"}, …]"""
    cap_feed_interval_s: Annotated[float, Field(ge=5, le=86_400)] = 60.0
    """how often each CAP feed is read"""
    cap_feed_max_entries: Annotated[int, Field(ge=1, le=10_000)] = 200
    """at most this many CAP messages taken from one reading of a feed"""
    cap_sender: str = Field(default="", validate_default=True)
    """our CAP `sender`, in every message we export; default `cunxiang-<county region>`"""
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must be a sqlite:// or postgresql:// URL")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        parts = urlsplit(value)
        try:
            is_tls_url_scheme(parts.scheme)
        except ValueError:
            raise ValueError("must look like mqtt://[user:password@]host[:port] (mqtts:// for TLS)") from None
        if not parts.hostname:
            raise ValueError("has no host: mqtt://[user:password@]host[:port]")
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
        return value

    @field_validator("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("mqtt_ca_file")
    @classmethod
    def _mqtt_ca_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        _only_over_tls(info)
        try:
            client_context(ca_file=value)
        except OSError as exc:
            raise ValueError(f"cannot be read as PEM CA certificates: {_why(exc)}") from None
        return value

    @field_validator("mqtt_cert_file")
    @classmethod
    def _mqtt_cert_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        _only_over_tls(info)
        _readable(value)
        return value

    @field_validator("mqtt_key_file")
    @classmethod
    def _mqtt_key_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """Checks the certificate and key as a pair (so it runs even when the key is unset)."""
        if "mqtt_cert_file" not in info.data:
            return value  # the certificate's own error is reported
        cert_file = info.data["mqtt_cert_file"]
        if cert_file is None:
            if value is not None:
                raise ValueError("is the key of CUNXIANG_MQTT_CERT_FILE, which is not set")
            return None
        if value is not None:
            _readable(value)
        try:
            client_context(cert_file=cert_file, key_file=value)
        except OSError as exc:
            where = "is not the key of" if value else "is not set, and there is no key in"
            raise ValueError(f"{where} CUNXIANG_MQTT_CERT_FILE: {_why(exc)}") from None
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        TopicScheme(value)
        return value

    @field_validator("controller_id")
    @classmethod
    def _controller_id(cls, value: str) -> str:
        if not is_terminal_id(value):
            raise ValueError("must be lowercase letters, digits and hyphens")
        return value

    @field_validator("county_region")
    @classmethod
    def _county_region(cls, value: str) -> str:
        if not is_region_code(value):
            raise ValueError("must be an administrative division code such as 421202")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone such as Asia/Shanghai") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("cap_feeds")
    @classmethod
    def _cap_feeds(cls, value: tuple[CapFeed, ...], info: ValidationInfo) -> tuple[CapFeed, ...]:
        names = [feed.name for feed in value]
        if len(set(names)) != len(names):
            raise ValueError("two feeds have the same name")
        county = info.data.get("county_region", "")
        for feed in value:
            within = feed.region is None or (is_region_code(feed.region) and feed.region.startswith(county))
            if not within:
                raise ValueError(f"feed {feed.name}: region {feed.region} is not a region within {county}")
        return value

    @field_validator("cap_geocodes")
    @classmethod
    def _cap_geocodes(cls, value: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
        bad = sorted(
            {
                c
                for values in value.values()
                for codes in values.values()
                for c in codes
                if not is_region_code(c)
            }
        )
        if bad:
            raise ValueError(f"maps to codes that are not region codes: {', '.join(bad)}")
        return value

    @field_validator("cap_sender")
    @classmethod
    def _cap_sender(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            # A bad county region has its own error; this one would only repeat it.
            county = info.data.get("county_region")
            return f"cunxiang-{county}" if county else value
        if not is_cap_token(value):
            raise ValueError("must be one word without spaces, commas, '<' or '&' (CAP's rule for a sender)")
        return value

    @property
    def cap_rules(self) -> CapRules:
        """The CAP tables, for controller.cap's mapping."""
        return CapRules(
            county_region=self.county_region,
            level_rules=self.cap_level_rules,
            languages=self.cap_languages,
            admin_geocode_names=self.cap_admin_geocode_names,
            geocodes=self.cap_geocodes,
            default_expires_s=self.cap_default_expires_s,
            max_expires_s=self.max_expires_in_s,
        )

    @property
    def topics(self) -> TopicScheme:
        return TopicScheme(self.topic_prefix)

    @property
    def embedded_broker(self) -> bool:
        return self.mqtt_url is None

    @property
    def base_url(self) -> str:
        """The controller's address as others reach it: CUNXIANG_PUBLIC_URL, else http://HOST:PORT."""
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
        return self.public_url or f"http://{host}:{self.http_port}"

    @property
    def media_url(self) -> str:
        """Where terminals download media from: `<public URL>/media`."""
        return f"{self.base_url}/media"


def _only_over_tls(info: ValidationInfo) -> None:
    """A TLS file with a plain mqtt:// broker would leave someone believing the link is encrypted."""
    url = info.data.get("mqtt_url")
    if url is not None and urlsplit(url).scheme != TLS_SCHEME:
        raise ValueError("is for an mqtts:// broker, but CUNXIANG_MQTT_URL is not mqtts://")


def _readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot be read: {_why(exc)}") from None


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class SettingsError(Exception):
    """Settings that cannot be used; the message names the environment variable."""


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; one clear message per bad setting on failure."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = ENV_PREFIX + ".".join(str(p) for p in error["loc"]).upper()
            lines.append(f"invalid setting {name}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("\n".join(lines)) from None
