"""Bad CAP input is rejected with a precise reason: never a crash, never a fetch, never a file read."""

import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from controller.cap import CapRejected, CapRejection, CapRules, ingest_cap, parse_cap, read_alert
from tests.cap_builders import CAP12, SENT, area_xml, cap_xml, info_xml, resource_xml

MAX_BYTES = 64 * 1024
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def _reason(data: bytes) -> str:
    with pytest.raises(CapRejected) as caught:
        read_alert(parse_cap(data, MAX_BYTES))
    return caught.value.reason


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A local port that records whether anyone connects: libxml2 would fetch in C, not through
    Python's `socket` (lxml 6 builds it without HTTP; this catches a build that has it)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


@pytest.fixture
def no_python_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("a CAP message made the parser open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _nobody_connected(server: socket.socket) -> bool:
    try:
        server.accept()
    except BlockingIOError:
        return True
    return False


@pytest.mark.usefixtures("no_python_sockets")
def test_a_doctype_with_external_entities_is_refused_without_fetching_or_reading(
    listener: socket.socket, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the county's secret")
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/evil"
    prolog = (
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE alert SYSTEM "{url}.dtd" [\n'
        f'  <!ENTITY remote SYSTEM "{url}.txt">\n'
        f'  <!ENTITY local SYSTEM "file://{secret}">\n'
        f'  <!ENTITY % param SYSTEM "{url}.ent"> %param;\n'
        "]>\n"
    )
    data = cap_xml(info_xml(headline="&remote;", description="&local;"), prolog=prolog)

    outcome = ingest_cap(
        data, rules=CapRules(county_region="421202"), max_bytes=MAX_BYTES, terminals=[], known=[], now=_now()
    )

    assert outcome.decision == CapRejection(
        reason="a DOCTYPE is not allowed in a CAP message (no DTDs, no entities)"
    )
    assert "secret" not in outcome.model_dump_json()
    assert _nobody_connected(listener)


def test_an_entity_expansion_bomb_is_refused_at_once() -> None:
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    prolog = f'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY l0 "lol">{lol}]>'

    assert _reason(cap_xml(info_xml(headline="&l9;"), prolog=prolog)).startswith("a DOCTYPE is not allowed")


@pytest.mark.usefixtures("no_python_sockets")
def test_a_schema_location_hint_is_not_followed(listener: socket.socket) -> None:
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/cap.xsd"
    data = cap_xml().replace(
        b"<alert ",
        f'<alert xmlns:xsi="{XSI}" xsi:schemaLocation="{CAP12} {url}" '.encode(),
    )

    assert read_alert(parse_cap(data, MAX_BYTES)).identifier == "XN-2026-001"
    assert _nobody_connected(listener)


def test_a_message_over_the_size_limit_is_refused_before_it_is_parsed() -> None:
    data = cap_xml(info_xml(description="雨" * 30_000))

    assert _reason(data) == f"the message is {len(data)} bytes; the limit is {MAX_BYTES}"
    assert _reason(b"<" * (MAX_BYTES + 1)).startswith("the message is")  # not even XML


@pytest.mark.parametrize(
    ("namespace", "reason"),
    [
        (
            "urn:oasis:names:tc:emergency:cap:1.1",
            "CAP 1.1 is not supported; send 1.2 (namespace urn:oasis:names:tc:emergency:cap:1.2)",
        ),
        (
            "http://www.incident.com/cap/1.0",
            "CAP 1.0 is not supported; send 1.2 (namespace urn:oasis:names:tc:emergency:cap:1.2)",
        ),
        (
            "urn:example:alert",
            "the root element is 'alert' in namespace urn:example:alert, not a CAP 1.2 alert "
            "(urn:oasis:names:tc:emergency:cap:1.2)",
        ),
    ],
)
def test_a_wrong_namespace_is_named(namespace: str, reason: str) -> None:
    assert _reason(cap_xml(namespace=namespace)) == reason


def test_an_alert_without_a_namespace_is_named() -> None:
    data = cap_xml().replace(f' xmlns="{CAP12}"'.encode(), b"")

    assert "in namespace (none), not a CAP 1.2 alert" in _reason(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (cap_xml()[:-10], "not well-formed XML: "),
        (b"", "the message is empty"),
        (b"\xff\xfe<alert>", "not well-formed XML: "),
        (
            cap_xml().replace(b"</sender>", b"</sendr>"),
            "not well-formed XML: Opening and ending tag mismatch",
        ),
    ],
)
def test_malformed_xml_is_refused_with_the_parser_s_words(data: bytes, reason: str) -> None:
    assert _reason(data).startswith(reason)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            cap_xml(status="Live"),
            "not valid CAP 1.2: line 2: Element 'status': [facet 'enumeration'] The value 'Live' is not an "
            "element of the set {'Actual', 'Exercise', 'System', 'Test', 'Draft'}.",
        ),
        (
            cap_xml(sent="2026-11-27T02:00:00Z"),
            "not valid CAP 1.2: line 2: Element 'sent': [facet 'pattern'] The value '2026-11-27T02:00:00Z' "
            "is not accepted by the pattern",
        ),
        (
            cap_xml(info_xml(event="")).replace(b"<event></event>", b""),
            "not valid CAP 1.2: line 2: Element 'urgency': This element is not expected. "
            "Expected is one of ( category, event ).",
        ),
    ],
)
def test_a_message_the_schema_refuses_is_refused_with_the_schema_s_words(data: bytes, reason: str) -> None:
    assert _reason(data).startswith(reason)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            cap_xml(msg_type="Cancel"),
            "an Cancel must name the message(s) it replaces in <references>; it has none",
        ),
        (
            cap_xml(msg_type="Update", references="qxj@xianning.gov.cn,XN-2026-000"),
            "<references> entry 'qxj@xianning.gov.cn,XN-2026-000' is not sender,identifier,sent",
        ),
        (
            cap_xml(msg_type="Update", references="a,b,2026-11-27T02:00:00Z"),
            "<references> '2026-11-27T02:00:00Z' is not a CAP time such as 2024-04-22T14:12:13+08:00",
        ),
        (
            cap_xml(identifier="XN 2026"),
            "<identifier> 'XN 2026' contains a space, comma, '<' or '&', which CAP forbids",
        ),
        (
            cap_xml(info_xml(areas=(area_xml(polygons=("30,114 30,115 29,115",)),))),
            "area '咸安区': a <polygon> needs at least 4 points with the first repeated last; "
            "it has 3, not closed",
        ),
        (
            cap_xml(info_xml(areas=(area_xml(polygons=("114.3,29.8 115,29.8 115,30 114.3,29.8",)),))),
            "area '咸安区': '114.3,29.8' is off the globe (latitude first, then longitude)",
        ),
        (
            cap_xml(info_xml(areas=(area_xml(circles=("29.8,114.3",)),))),
            "area '咸安区': <circle> '29.8,114.3' is not 'latitude,longitude radius'",
        ),
        (
            cap_xml(info_xml(resources=(resource_xml(deref="not base64!"),))),
            "resource '预警音频': <derefUri> is not base64",
        ),
    ],
)
def test_the_spec_s_rules_beyond_the_schema_are_enforced(data: bytes, reason: str) -> None:
    assert _reason(data) == reason


def test_a_message_that_is_not_an_alert_is_refused() -> None:
    data = f'<info xmlns="{CAP12}"><event>x</event></info>'.encode()

    assert _reason(data).startswith("the root element is 'info'")


def test_a_doctype_the_byte_search_cannot_see_is_refused_after_parsing() -> None:
    data = cap_xml(prolog='<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE alert>').decode().encode("utf-16")

    assert _reason(data) == "a DOCTYPE is not allowed in a CAP message (no DTDs, no entities)"


def test_the_sent_time_keeps_its_offset() -> None:
    assert read_alert(parse_cap(cap_xml(), MAX_BYTES)).sent.isoformat() == SENT


def _now() -> datetime:
    return datetime.fromisoformat(SENT)
