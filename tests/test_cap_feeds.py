"""Reading CAP messages from directories, files and Atom/RSS feeds (controller/cap/feeds.py).

Real parts only: files in tmp_path, and real HTTP over TCP from a local server that records every
request, so a test can tell what was fetched and what was not. The messages inside the feeds are
the real ones of tests/data/cap.
"""

import re
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from controller.cap import parse_cap, read_alert
from controller.cap.feeds import FeedItem, read_source
from controller.cap.fetch import MAX_REDIRECTS, OriginHeaders, new_client

CORPUS = Path(__file__).parent / "data" / "cap"
ATOM = "http://www.w3.org/2005/Atom"
CAP12 = "urn:oasis:names:tc:emergency:cap:1.2"
MAX_BYTES = 64 * 1024
MAX_ENTRIES = 50
NO_DOCTYPE = "a DOCTYPE is not allowed in a feed or a CAP message (no DTDs, no entities)"

RAIN = "19_tw-cwa_heavy-rain_zh-TW_1-ALERT_CWA-Weather_extremely-rain_202404221405001.xml"
RAIN_UPDATE = "20_tw-cwa_heavy-rain_zh-TW_2-UPDATE_refs-221405001_two-info.xml"
QUAKE_WITH_BOM = "23_tw-cwa_earthquake-report_zh-TW_UTF8-BOM_circle_geocodes.xml"
PREFIXED = "31_au-bom_thunderstorm_cap-prefixed-namespace.xml"
SIGNED = "35_sc-seychelles-met_strong-winds_polygon_signed_VALID.xml"
TSUNAMI = "12_us-wcatwc_tsunami-warning_UPDATE_references.xml"
OVER_64_KIB = "08_us-ipaws-puerto-rico_required-monthly-test_embedded-mp3-derefUri_signed.xml"


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def by_number(prefix: str) -> bytes:
    (path,) = CORPUS.glob(f"{prefix}*.xml")
    return path.read_bytes()


def embeddable(name: str) -> str:
    """A corpus message as it can stand inside a feed: no byte-order mark, declaration or PIs."""
    return re.sub(r"^\ufeff?(\s*<\?.*?\?>)*\s*", "", corpus(name).decode("utf-8"), flags=re.DOTALL)


def identifier(data: bytes | None) -> str:
    assert data is not None
    return read_alert(parse_cap(data, MAX_BYTES)).identifier


def atom(*entries: str, prolog: str = '<?xml version="1.0" encoding="UTF-8"?>\n', extra: str = "") -> bytes:
    return (
        f'{prolog}<feed xmlns="{ATOM}" {extra}><id>urn:test:feed</id><title>test</title>'
        f"<updated>2024-04-22T14:12:13+08:00</updated>{''.join(entries)}</feed>"
    ).encode()


def entry(entry_id: str, body: str, attributes: str = "") -> str:
    return f"<entry {attributes}><id>{entry_id}</id><title>{entry_id}</title>{body}</entry>"


def rss(*items: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>test</title>'
        f"<link>http://example.org/</link><description>test</description>{''.join(items)}</channel></rss>"
    ).encode()


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    endless: bool = False


class FeedServer:
    """A local HTTP server on a free port: `routes` by path; `requests` records (path, Accept)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str]] = []
        self.keys: list[str | None] = []
        """the X-API-Key of each request"""
        self.endless_cut_off = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def url(self, path: str) -> str:
        return self.base + path

    def serve(self, path: str, body: bytes = b"", status: int = 200, **headers: str) -> str:
        self.routes[path] = Route(body, status, {name.replace("_", "-"): v for name, v in headers.items()})
        return self.url(path)

    @property
    def paths(self) -> list[str]:
        return [path for path, _accept in self.requests]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Accept", "")))
                server.keys.append(self.headers.get("X-API-Key"))
                route = server.routes.get(self.path, Route(b"not here", 404))
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if route.endless:
                    self.end_headers()
                    self._send_forever()
                    return
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                self.wfile.write(route.body)

            def _send_forever(self) -> None:
                self.wfile.write(atom()[:-7])
                try:
                    for _ in range(10_000):  # 1.2 GB: far more than any buffer between us
                        self.wfile.write(entry("x", "<link href='x.xml'/>").encode() * 2000)
                except (BrokenPipeError, ConnectionResetError):
                    server.endless_cut_off.set()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@contextmanager
def port_nobody_listens_on() -> Iterator[int]:
    """A port bound but not listening, for the length of the `with`: connecting is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.fixture
def server() -> Iterator[FeedServer]:
    feeds = FeedServer()
    yield feeds
    feeds.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


async def read(
    source: str | Path, client: httpx.AsyncClient, max_entries: int = MAX_ENTRIES
) -> list[FeedItem]:
    return await read_source(str(source), client=client, max_bytes=MAX_BYTES, max_entries=max_entries)


async def test_a_directory_gives_its_cap_files_in_name_order_as_they_are_and_refuses_oversized_ones(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    (tmp_path / "b-rain.xml").write_bytes(corpus(RAIN))
    (tmp_path / "a-broken.CAP").write_bytes(corpus(RAIN)[:300])
    (tmp_path / "c-too-big.xml").write_bytes(corpus(OVER_64_KIB))
    (tmp_path / "d-notes.txt").write_text("not a message")
    (tmp_path / "e-folder.xml").mkdir()
    (tmp_path / "e-folder.xml" / "nested.xml").write_bytes(corpus(PREFIXED))

    items = await read(tmp_path, client)

    assert items == [
        FeedItem(origin=str(tmp_path / "a-broken.CAP"), data=corpus(RAIN)[:300]),
        FeedItem(origin=str(tmp_path / "b-rain.xml"), data=corpus(RAIN)),
        FeedItem(
            origin=str(tmp_path / "c-too-big.xml"),
            error=f"the file is {len(corpus(OVER_64_KIB))} bytes; the limit is {MAX_BYTES}",
        ),
    ]


async def test_a_directory_with_more_files_than_max_entries_says_how_many_were_left_out(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    for name in (RAIN, RAIN_UPDATE, PREFIXED):
        (tmp_path / name).write_bytes(corpus(name))

    items = await read(tmp_path, client, max_entries=2)

    assert [item.data for item in items[:2]] == [corpus(RAIN), corpus(RAIN_UPDATE)]
    assert items[2] == FeedItem(
        origin=str(tmp_path),
        error=f"{tmp_path} has 3 files; only the first 2 were read, "
        "the other 1 were left out (the limit is 2)",
    )


async def test_a_file_holding_a_cap_message_is_one_item_exactly_as_stored(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    path = tmp_path / "quake.xml"
    path.write_bytes(corpus(QUAKE_WITH_BOM))

    assert await read(path, client) == [FeedItem(origin=str(path), data=corpus(QUAKE_WITH_BOM))]


async def test_a_local_file_is_read_as_a_feed_by_its_content_not_its_name(
    tmp_path: Path, server: FeedServer, client: httpx.AsyncClient
) -> None:
    url = server.serve("/cwa/rain.cap", corpus(RAIN))
    path = tmp_path / "index.cap"
    path.write_bytes(atom(entry("rain", f'<link type="application/cap+xml" href="{url}"/>')))

    assert await read(path, client) == [FeedItem(origin=url, data=corpus(RAIN))]


async def test_atom_entries_with_inline_alerts_become_cap_messages_of_their_own(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    # As NWS feeds do, the feed declares the `cap` prefix; one alert relies on it.
    prefixed_without_its_declaration = embeddable(PREFIXED).replace(f' xmlns:cap="{CAP12}"', "", 1)
    feed = atom(
        entry("rain", f'<content type="application/cap+xml">{embeddable(RAIN)}</content>'),
        entry("storm", f'<content type="text/xml">{prefixed_without_its_declaration}</content>'),
        entry("signed", f'<content type="application/cap+xml">{embeddable(SIGNED)}</content>'),
        extra=f'xmlns:cap="{CAP12}"',
    )
    url = server.serve("/inline.atom", feed)

    items = await read(url, client)

    assert [item.origin for item in items] == [f"{url}#rain", f"{url}#storm", f"{url}#signed"]
    assert [identifier(item.data) for item in items] == [
        identifier(corpus(name)) for name in (RAIN, PREFIXED, SIGNED)
    ]
    assert all(item.data is not None and item.data.startswith(b"<?xml") for item in items)
    assert server.paths == ["/inline.atom"]


async def test_atom_entries_link_to_their_messages_relatively_or_absolutely_preferring_the_cap_type(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.serve("/feeds/alerts/rain.xml", corpus(RAIN))
    server.serve("/feeds/page.html", b"<html>a web page</html>", Content_Type="text/html")
    ncdr = server.serve("/Capstorage/CWA/2024/update.cap", corpus(RAIN_UPDATE))
    server.serve("/mirror/storm.xml", corpus(PREFIXED))
    server.serve("/feeds/signed.cap", corpus(SIGNED))
    feed = atom(
        entry(
            "pagasa-style",
            '<link rel="alternate" type="text/html" href="page.html"/>'
            '<link rel="related" type="application/cap+xml" href="alerts/rain.xml"/>',
        ),
        entry("ncdr-style", f'<link rel="alternate" href="{ncdr}"/>'),
        entry("based", '<link href="storm.xml"/>', attributes='xml:base="/mirror/"'),
        entry("out-of-line", '<content type="application/cap+xml" src="signed.cap"/>'),
    )
    url = server.serve("/feeds/index.atom", feed)

    items = await read(url, client)

    assert items == [
        FeedItem(origin=server.url("/feeds/alerts/rain.xml"), data=corpus(RAIN)),
        FeedItem(origin=ncdr, data=corpus(RAIN_UPDATE)),
        FeedItem(origin=server.url("/mirror/storm.xml"), data=corpus(PREFIXED)),
        FeedItem(origin=server.url("/feeds/signed.cap"), data=corpus(SIGNED)),
    ]
    assert "/feeds/page.html" not in server.paths


async def test_an_nws_style_entry_with_cap_fields_is_fetched_from_its_extensionless_link_asking_for_cap(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    path = "/alerts/urn:oid:2.49.0.1.840.0.1a2b"
    message = server.serve(path, corpus(TSUNAMI))
    fields = "<cap:event>Tsunami Warning</cap:event><cap:expires>2011-03-11T09:00:00-00:00</cap:expires>"
    url = server.serve(
        "/alerts/active.atom",
        atom(entry(message, f'<link href="{message}"/>{fields}'), extra=f'xmlns:cap="{CAP12}"'),
    )

    items = await read(url, client, max_entries=5)

    assert items == [FeedItem(origin=message, data=corpus(TSUNAMI))]
    assert dict(server.requests)[path].startswith("application/cap+xml")


async def test_an_entry_without_a_link_to_a_cap_message_is_an_error_for_that_entry(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.serve("/rain.xml", corpus(RAIN))
    feed = atom(
        entry("news", '<link rel="alternate" type="text/html" href="/news/today"/>'),
        entry("rain", '<link href="/rain.xml"/>'),
    )
    url = server.serve("/mixed.atom", feed)

    assert await read(url, client) == [
        FeedItem(origin=f"{url}#news", error="the entry links to no CAP message"),
        FeedItem(origin=server.url("/rain.xml"), data=corpus(RAIN)),
    ]
    assert "/news/today" not in server.paths


async def test_rss_items_give_their_links_cap_enclosures_and_guid_urls(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.serve("/cap/rain.xml", corpus(RAIN))
    server.serve("/cap/update", corpus(RAIN_UPDATE))
    server.serve("/cap/storm.cap", corpus(PREFIXED))
    server.serve("/php/capfeed.php?id=7", corpus(SIGNED))
    url = server.serve(
        "/rss.xml",
        rss(
            "<item><title>link</title><link>cap/rain.xml</link></item>",
            "<item><title>enclosure</title><link>http://example.org/page</link>"
            '<enclosure url="/cap/update" type="application/cap+xml" length="8017"/></item>',
            "<item><title>guid</title><link>http://example.org/page2</link>"
            f'<guid isPermaLink="true">{server.url("/cap/storm.cap")}</guid></item>',
            "<item><title>plain link</title><link>/php/capfeed.php?id=7</link><guid>urn:sc:7</guid></item>",
        ),
    )

    items = await read(url, client)

    assert [item.data for item in items] == [corpus(name) for name in (RAIN, RAIN_UPDATE, PREFIXED, SIGNED)]
    assert not any(path.startswith("/page") for path in server.paths)


async def test_a_feed_with_a_doctype_is_refused_whole_without_fetching_anything(
    server: FeedServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the county's secret")
    server.serve("/rain.xml", corpus(RAIN))
    prolog = (
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE feed SYSTEM "{server.url("/evil.dtd")}" [\n'
        f'  <!ENTITY remote SYSTEM "{server.url("/evil.txt")}">\n'
        f'  <!ENTITY local SYSTEM "file://{secret}">\n'
        f'  <!ENTITY % param SYSTEM "{server.url("/evil.ent")}"> %param;\n'
        "]>\n"
    )
    feed = atom(entry("rain", '<summary>&remote;&local;</summary><link href="/rain.xml"/>'), prolog=prolog)
    url = server.serve("/evil.atom", feed)
    path = tmp_path / "evil.atom"
    path.write_bytes(feed)

    assert await read(url, client) == [FeedItem(origin=url, error=NO_DOCTYPE)]
    assert await read(path, client) == [FeedItem(origin=str(path), error=NO_DOCTYPE)]
    assert server.paths == ["/evil.atom"]


async def test_a_linked_message_that_cannot_be_had_is_an_error_for_its_entry_alone(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.serve("/rain.xml", corpus(RAIN))
    gone = server.url("/gone.xml")
    sly = server.serve("/sly.xml", status=302, Location="file:///etc/passwd")
    garbled = server.serve("/garbled.xml", status=302, Location="http://[oops/rain.xml")
    big = server.serve("/big.xml", corpus(OVER_64_KIB))
    feed = atom(
        entry("gone", f'<link type="application/cap+xml" href="{gone}"/>'),
        entry("sly", f'<link type="application/cap+xml" href="{sly}"/>'),
        entry("local", '<link type="application/cap+xml" href="file:///etc/passwd"/>'),
        entry("garbled", f'<link type="application/cap+xml" href="{garbled}"/>'),
        entry("unsplittable", '<link type="application/cap+xml" href="http://[oops/rain.xml"/>'),
        entry("big", f'<link type="application/cap+xml" href="{big}"/>'),
        entry("rain", '<link type="application/cap+xml" href="/rain.xml"/>'),
    )
    url = server.serve("/feed.atom", feed)

    items = await read(url, client)

    assert items == [
        FeedItem(origin=gone, error=f"fetching {gone}: HTTP 404"),
        FeedItem(
            origin=sly, error=f"fetching {sly}: redirected to file:///etc/passwd, which is not an http(s) URL"
        ),
        FeedItem(
            origin=f"{url}#local", error="the entry links to file:///etc/passwd, which is not an http(s) URL"
        ),
        FeedItem(
            origin=garbled,
            error=f"fetching {garbled}: redirected to http://[oops/rain.xml, which is not an http(s) URL",
        ),
        FeedItem(
            origin=f"{url}#unsplittable",
            error="the entry links to http://[oops/rain.xml, which is not an http(s) URL",
        ),
        FeedItem(origin=big, error=f"fetching {big}: the response is over the limit of {MAX_BYTES} bytes"),
        FeedItem(origin=server.url("/rain.xml"), data=corpus(RAIN)),
    ]
    assert "root:" not in repr(items)


async def test_redirects_are_followed_over_http_a_few_times_at_most(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.serve("/new/rain.xml", corpus(RAIN))
    moved = server.serve("/old/rain.xml", status=301, Location="/new/rain.xml")
    for hop in range(MAX_REDIRECTS + 1):
        server.serve(f"/loop/{hop}", status=307, Location=f"/loop/{hop + 1}")

    assert await read(moved, client) == [FeedItem(origin=moved, data=corpus(RAIN))]
    assert await read(server.url("/loop/0"), client) == [
        FeedItem(
            origin=server.url("/loop/0"),
            error=f"fetching {server.url('/loop/0')}: more than {MAX_REDIRECTS} redirects",
        )
    ]
    assert f"/loop/{MAX_REDIRECTS + 1}" not in server.paths


async def test_an_endless_feed_is_cut_off_once_it_passes_max_bytes(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    server.routes["/endless.atom"] = Route(endless=True)
    url = server.url("/endless.atom")

    assert await read(url, client) == [
        FeedItem(origin=url, error=f"fetching {url}: the response is over the limit of {MAX_BYTES} bytes")
    ]
    assert server.endless_cut_off.wait(timeout=30)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            b'<html xmlns="http://www.w3.org/1999/xhtml"><body>alerts</body></html>',
            "neither an Atom or RSS feed nor a CAP alert: the root element is 'html' "
            "in namespace http://www.w3.org/1999/xhtml",
        ),
        (
            b"<opml version='2.0'><body/></opml>",
            "neither an Atom or RSS feed nor a CAP alert: the root element is 'opml' in namespace (none)",
        ),
        (b"<html><body>Service Unavailable<br></body></html>", "not well-formed XML: "),
        (b"", "not well-formed XML: "),
    ],
)
async def test_a_document_that_is_neither_a_feed_nor_an_alert_is_one_error_item(
    server: FeedServer, client: httpx.AsyncClient, body: bytes, error: str
) -> None:
    url = server.serve("/not-a-feed", body)

    [item] = await read(url, client)

    assert item.origin == url
    assert item.error is not None and item.error.startswith(error)


async def test_a_url_answering_with_a_cap_alert_is_one_item_exactly_as_received(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    url = server.serve("/latest", corpus(QUAKE_WITH_BOM), Content_Type="application/cap+xml")

    assert await read(url, client) == [FeedItem(origin=url, data=corpus(QUAKE_WITH_BOM))]


async def test_max_entries_reads_the_first_entries_and_says_how_many_were_left_out(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    names = [RAIN, RAIN_UPDATE, PREFIXED, SIGNED, TSUNAMI]
    for number, name in enumerate(names):
        server.serve(f"/{number}.xml", corpus(name))
    url = server.serve("/feed.atom", atom(*(entry(str(n), f'<link href="/{n}.xml"/>') for n in range(5))))

    items = await read(url, client, max_entries=3)

    assert [item.data for item in items[:3]] == [corpus(name) for name in names[:3]]
    assert items[3] == FeedItem(
        origin=url,
        error=f"{url} has 5 entries; only the first 3 were read, the other 2 were left out (the limit is 3)",
    )
    assert "/3.xml" not in server.paths and "/4.xml" not in server.paths


async def test_the_same_message_twice_in_a_feed_is_fetched_and_given_once(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    message = server.serve("/warnings/feeds-taiwan/3ec5a08b", corpus(RAIN))
    # MeteoAlarm lists a message once per area, each entry with its own id and the same link.
    feed = atom(
        *(
            entry(f"{message}?index_area={area}", f'<link href="{message}" type="application/cap+xml"/>')
            for area in range(3)
        ),
        entry("inline-1", f'<content type="application/cap+xml">{embeddable(PREFIXED)}</content>'),
        entry("inline-2", f'<content type="application/cap+xml">{embeddable(PREFIXED)}</content>'),
    )
    url = server.serve("/meteoalarm.atom", feed)

    items = await read(url, client)

    assert [item.origin for item in items] == [message, f"{url}#inline-1"]
    assert server.paths.count("/warnings/feeds-taiwan/3ec5a08b") == 1


async def test_a_feed_that_cannot_be_fetched_is_one_error_item(
    server: FeedServer, client: httpx.AsyncClient
) -> None:
    failing = server.serve("/feed.atom", b"oops", status=500)
    with port_nobody_listens_on() as port:
        unreachable = f"http://127.0.0.1:{port}/feed.atom"
        [item] = await read(unreachable, client)

    assert await read(failing, client) == [FeedItem(origin=failing, error=f"fetching {failing}: HTTP 500")]
    assert item.origin == unreachable
    assert item.error is not None and item.error.startswith(f"fetching {unreachable}: ConnectError")


async def test_a_source_that_is_no_http_url_directory_or_file_is_one_error_item(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    missing = tmp_path / "missing"

    assert await read("ftp://example.org/feed.xml", client) == [
        FeedItem(
            origin="ftp://example.org/feed.xml", error="only http(s) URLs, directories and files can be read"
        )
    ]
    assert await read(missing, client) == [FeedItem(origin=str(missing), error=f"{missing} does not exist")]


@pytest.mark.parametrize(("data", "error"), [(None, None), (b"<alert/>", "and a reason")])
def test_a_feed_item_has_either_data_or_an_error(data: bytes | None, error: str | None) -> None:
    with pytest.raises(ValidationError, match="either data or an error"):
        FeedItem(origin="x", data=data, error=error)


async def test_a_feeds_credentials_go_to_its_own_host_only(server: FeedServer) -> None:
    elsewhere = FeedServer()
    try:
        theirs = elsewhere.serve("/theirs.xml", by_number("19_"))
        moved = elsewhere.serve("/moved.xml", by_number("25_"))
        server.serve("/ours.xml", by_number("23_"))
        server.serve("/redirect.xml", status=302, Location=moved)
        source = server.serve(
            "/feed.atom",
            atom(
                entry("1", "<link type='application/cap+xml' href='ours.xml'/>"),
                entry("2", f"<link type='application/cap+xml' href='{theirs}'/>"),
                entry("3", "<link type='application/cap+xml' href='redirect.xml'/>"),
            ),
        )
        auth = OriginHeaders(source, {"X-API-Key": "cxk_secret"})
        async with new_client(10, auth) as client:
            items = await read_source(source, client=client, max_bytes=MAX_BYTES, max_entries=10)
        assert [identifier(item.data) for item in items] == [
            identifier(by_number("23_")),
            identifier(by_number("19_")),
            identifier(by_number("25_")),
        ]
        assert server.keys == ["cxk_secret"] * 3
        assert elsewhere.paths == ["/theirs.xml", "/moved.xml"] and elsewhere.keys == [None, None]
    finally:
        elsewhere.close()
