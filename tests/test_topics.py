"""Topic builders and the controller's topic parser (devices/topics.py)."""

from collections.abc import Callable

import pytest

from devices.errors import ProtocolError, TopicError
from devices.topics import TerminalChannel, TerminalTopic, TopicScheme

SCHEME = TopicScheme()
TERMINAL = "t-421202001002-01"

TerminalBuilder = Callable[[TopicScheme, str], str]

TERMINAL_BUILDERS: dict[str, TerminalBuilder] = {
    "terminal_command": TopicScheme.terminal_command,
    "terminal_status": TopicScheme.terminal_status,
    "terminal_heartbeat": TopicScheme.terminal_heartbeat,
    "terminal_ack": TopicScheme.terminal_ack,
}

CHANNEL_BUILDERS: dict[TerminalChannel, TerminalBuilder] = {
    TerminalChannel.STATUS: TopicScheme.terminal_status,
    TerminalChannel.HEARTBEAT: TopicScheme.terminal_heartbeat,
    TerminalChannel.ACK: TopicScheme.terminal_ack,
}

MALFORMED_TERMINAL_IDS = ["", "T1", "-t1", "t1-", "t_1", "t/1", "+", "#", "a" * 65]


def test_default_prefix_is_cx() -> None:
    assert TopicScheme().prefix == "cx"


def test_root_is_prefix_and_protocol_version() -> None:
    assert TopicScheme("county-a").root == "county-a/v1"


def test_region_command_topic() -> None:
    assert SCHEME.region_command("421202") == "cx/v1/region/421202/cmd"


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        ("terminal_command", "cx/v1/terminal/t-421202001002-01/cmd"),
        ("terminal_status", "cx/v1/terminal/t-421202001002-01/status"),
        ("terminal_heartbeat", "cx/v1/terminal/t-421202001002-01/heartbeat"),
        ("terminal_ack", "cx/v1/terminal/t-421202001002-01/ack"),
    ],
)
def test_terminal_topic_builders(builder: str, expected: str) -> None:
    assert TERMINAL_BUILDERS[builder](SCHEME, TERMINAL) == expected


def test_controller_status_topic() -> None:
    assert SCHEME.controller_status("controller-1") == "cx/v1/controller/controller-1/status"


def test_builders_use_the_scheme_prefix() -> None:
    scheme = TopicScheme("county-a")
    assert scheme.region_command("421202") == "county-a/v1/region/421202/cmd"
    assert scheme.terminal_ack("t1") == "county-a/v1/terminal/t1/ack"


@pytest.mark.parametrize("code", ["", "421", "42120", "42a2", "+", "#"])
def test_region_command_rejects_malformed_region_code_as_bad_region(code: str) -> None:
    with pytest.raises(TopicError) as caught:
        SCHEME.region_command(code)
    assert caught.value.reason == "bad_region"


@pytest.mark.parametrize("builder", sorted(TERMINAL_BUILDERS))
@pytest.mark.parametrize("terminal_id", MALFORMED_TERMINAL_IDS)
def test_terminal_builders_reject_malformed_terminal_id_as_bad_terminal_id(
    builder: str, terminal_id: str
) -> None:
    with pytest.raises(TopicError) as caught:
        TERMINAL_BUILDERS[builder](SCHEME, terminal_id)
    assert caught.value.reason == "bad_terminal_id"


@pytest.mark.parametrize("controller_id", MALFORMED_TERMINAL_IDS)
def test_controller_status_rejects_malformed_id_as_bad_controller_id(controller_id: str) -> None:
    with pytest.raises(TopicError) as caught:
        SCHEME.controller_status(controller_id)
    assert caught.value.reason == "bad_controller_id"


def test_terminal_subscriptions_are_own_command_topic_then_every_enclosing_region_widest_first() -> None:
    assert SCHEME.terminal_subscriptions(TERMINAL, "421202001002") == [
        "cx/v1/terminal/t-421202001002-01/cmd",
        "cx/v1/region/42/cmd",
        "cx/v1/region/4212/cmd",
        "cx/v1/region/421202/cmd",
        "cx/v1/region/421202001/cmd",
        "cx/v1/region/421202001002/cmd",
    ]


def test_terminal_subscriptions_of_a_county_terminal_stop_at_the_county() -> None:
    assert SCHEME.terminal_subscriptions("t1", "421202") == [
        "cx/v1/terminal/t1/cmd",
        "cx/v1/region/42/cmd",
        "cx/v1/region/4212/cmd",
        "cx/v1/region/421202/cmd",
    ]


def test_terminal_subscriptions_reject_malformed_region_code() -> None:
    with pytest.raises(ValueError, match="not a region code"):
        SCHEME.terminal_subscriptions(TERMINAL, "42120")


def test_terminal_subscriptions_reject_malformed_terminal_id() -> None:
    with pytest.raises(TopicError) as caught:
        SCHEME.terminal_subscriptions("T1", "421202001002")
    assert caught.value.reason == "bad_terminal_id"


def test_controller_subscriptions_cover_every_terminal_channel_with_a_wildcard() -> None:
    assert SCHEME.controller_subscriptions() == [
        "cx/v1/terminal/+/status",
        "cx/v1/terminal/+/heartbeat",
        "cx/v1/terminal/+/ack",
    ]


@pytest.mark.parametrize("channel", list(TerminalChannel))
def test_parse_terminal_topic_round_trips_every_channel(channel: TerminalChannel) -> None:
    topic = CHANNEL_BUILDERS[channel](SCHEME, TERMINAL)
    assert SCHEME.parse_terminal_topic(topic) == TerminalTopic(TERMINAL, channel)


def test_parse_terminal_topic_returns_channel_as_enum_member() -> None:
    assert SCHEME.parse_terminal_topic("cx/v1/terminal/t1/ack").channel is TerminalChannel.ACK


def test_parse_terminal_topic_round_trips_with_custom_prefix() -> None:
    scheme = TopicScheme("county_a-2")
    assert scheme.parse_terminal_topic(scheme.terminal_status("t1")) == TerminalTopic(
        "t1", TerminalChannel.STATUS
    )


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        pytest.param("xx/v1/terminal/t1/ack", "unexpected_topic", id="wrong-prefix"),
        pytest.param("CX/v1/terminal/t1/ack", "unexpected_topic", id="prefix-case"),
        pytest.param("cx/v2/terminal/t1/ack", "unexpected_topic", id="wrong-version"),
        pytest.param("cx/1/terminal/t1/ack", "unexpected_topic", id="version-without-v"),
        pytest.param("cx/v1/terminals/t1/ack", "unexpected_topic", id="wrong-kind"),
        pytest.param("cx/v1/region/421202/cmd", "unexpected_topic", id="region-command"),
        pytest.param("cx/v1/controller/controller-1/status", "unexpected_topic", id="controller-status"),
        pytest.param("cx/v1/terminal/t1/cmd", "unexpected_topic", id="terminal-command-channel"),
        pytest.param("cx/v1/terminal/t1/telemetry", "unexpected_topic", id="unknown-channel"),
        pytest.param("cx/v1/terminal/t1/ACK", "unexpected_topic", id="channel-case"),
        pytest.param("cx/v1/terminal/t1/", "unexpected_topic", id="empty-channel"),
        pytest.param("cx/v1/terminal/t1/ack/extra", "unexpected_topic", id="extra-level"),
        pytest.param("cx/v1/terminal/t1/ack/", "unexpected_topic", id="trailing-slash"),
        pytest.param("/cx/v1/terminal/t1/ack", "unexpected_topic", id="leading-slash"),
        pytest.param("cx/v1/terminal/t1", "unexpected_topic", id="missing-channel"),
        pytest.param("cx/v1/terminal", "unexpected_topic", id="missing-id-and-channel"),
        pytest.param("", "unexpected_topic", id="empty"),
        pytest.param("cx/v1/terminal/T1/ack", "bad_terminal_id", id="uppercase-id"),
        pytest.param("cx/v1/terminal/-t1/ack", "bad_terminal_id", id="leading-hyphen-id"),
        pytest.param("cx/v1/terminal//ack", "bad_terminal_id", id="empty-id"),
        pytest.param("cx/v1/terminal/+/ack", "bad_terminal_id", id="wildcard-id"),
        pytest.param("cx/v1/terminal/t_1/ack", "bad_terminal_id", id="underscore-id"),
        pytest.param(f"cx/v1/terminal/{'a' * 65}/ack", "bad_terminal_id", id="65-character-id"),
    ],
)
def test_parse_terminal_topic_rejects_topic_with_reason(topic: str, reason: str) -> None:
    with pytest.raises(TopicError) as caught:
        SCHEME.parse_terminal_topic(topic)
    assert caught.value.reason == reason


def test_parse_terminal_topic_rejects_topic_of_another_prefix() -> None:
    with pytest.raises(TopicError) as caught:
        TopicScheme("county-b").parse_terminal_topic("cx/v1/terminal/t1/ack")
    assert caught.value.reason == "unexpected_topic"


def test_parse_terminal_topic_rejects_terminal_id_with_trailing_newline() -> None:
    with pytest.raises(TopicError) as caught:
        SCHEME.parse_terminal_topic("cx/v1/terminal/t1\n/ack")
    assert caught.value.reason == "bad_terminal_id"


def test_topic_error_is_a_protocol_error_and_a_value_error() -> None:
    error = TopicError("unexpected_topic", "detail")
    assert isinstance(error, ProtocolError)
    assert isinstance(error, ValueError)


def test_topic_error_carries_reason_and_detail() -> None:
    error = TopicError("bad_region", "not a region code: '1'")
    assert (error.reason, error.detail, str(error)) == (
        "bad_region",
        "not a region code: '1'",
        "bad_region: not a region code: '1'",
    )


@pytest.mark.parametrize("prefix", ["cx", "a", "0", "county-a", "county_a", "c9", "a" * 32])
def test_valid_prefix_is_accepted(prefix: str) -> None:
    assert TopicScheme(prefix).prefix == prefix


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("", id="empty"),
        pytest.param("CX", id="uppercase"),
        pytest.param("-cx", id="leading-hyphen"),
        pytest.param("_cx", id="leading-underscore"),
        pytest.param("cx/a", id="slash"),
        pytest.param("cx a", id="space"),
        pytest.param("cx+", id="single-level-wildcard"),
        pytest.param("cx#", id="multi-level-wildcard"),
        pytest.param("$sys", id="dollar"),
        pytest.param("a" * 33, id="33-characters"),
        pytest.param("村", id="non-ascii"),
    ],
)
def test_invalid_prefix_is_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="topic prefix must match"):
        TopicScheme(prefix)


def test_prefix_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ValueError):
        TopicScheme("cx\n")
