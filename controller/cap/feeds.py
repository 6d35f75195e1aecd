"""Reading CAP messages from a source: a directory, a file, or an Atom 1.0 / RSS 2.0 feed.

    read_source(source, client=…, max_bytes=…, max_entries=…) -> list[FeedItem]

Every `FeedItem` holds either the bytes of one CAP message (`data`), for the caller to ingest, or
the precise reason it could not be had (`error`), for the caller to store as a rejection. Nothing
here raises for bad input or a network failure, nothing is parsed as CAP (ingest does that), and
nothing is stored. A failure of the whole source is one item whose origin is the source.

What a source is:

- a directory: each regular file in it named `*.xml` or `*.cap` (in any case), sorted by name, not
  recursive. Each file is one CAP message, passed on as it is.
- a file or an `http(s)://` URL, told apart by content, never by name: an Atom `feed` or an RSS
  `rss` document is a feed; an `alert` root is one CAP message, passed on exactly as received.
  Anything else is an error item naming its root element.

Feeds are parsed by `parse_xml_safely`, as CAP is: no DTD (a DOCTYPE makes the whole feed an
error item), no entities, no network. Within a feed, an Atom entry is, in this order:

1. a CAP alert inline: an `alert` element inside `<content>` whose type says XML or CAP
   (`application/cap+xml`, `text/xml`), serialised as a document of its own. Its bytes are a
   re-serialisation, not the feed's bytes, and its namespace is checked by ingest;
2. a link whose `type` contains `cap` (`application/cap+xml`, any `rel`; MeteoAlarm, PAGASA), or
   a `<content src>` of that type;
3. an alternate link (`rel="alternate"` or none) whose path ends `.xml` or `.cap` (Taiwan's NCDR);
4. the alternate link of an entry that carries `cap:` index fields (`cap:event`, `cap:expires`…):
   the US NWS links its full messages so, without a type or a file extension.

An RSS item is a `<enclosure>` whose type contains `cap`, else the first of its `<link>`, its
enclosures and its `<guid>` (as a URL) whose path ends `.xml` or `.cap`, else its `<link>`.
Relative links resolve against the feed's address and any `xml:base`; only http and https are
fetched, so a link in a local feed file must be absolute. An entry with none of these is an error
item ("the entry links to no CAP message").

Limits, all given by the caller:

- `max_bytes` bounds every file and every response: a file's size is checked before it is read,
  and a download stops as soon as it passes the limit (a gzip response counts decoded bytes).
- `max_entries` bounds the entries of a feed and the files of a directory. The first ones are
  read, in document order (feeds list the newest first) or name order; one more error item, with
  the source as its origin, says how many were left out.
- `client` sets the timeouts and headers (the NWS asks for a User-Agent). A response that takes
  too long in total is the caller's to bound (`asyncio.timeout`): the client's read timeout
  applies to each chunk.

Fetching sends `Accept: application/cap+xml` first (the NWS API answers CAP only when asked), and
follows at most `MAX_REDIRECTS` redirects, each to http or https only. Any status outside 2xx is an
error item naming it. A linked message that cannot be had is an error item for that entry alone.
The same link, or the same inline alert, met twice in one feed gives one item (MeteoAlarm lists a
message once per area). Linked messages are fetched `PARALLEL_FETCHES` at a time.
"""

import asyncio
import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import httpx
from lxml import etree
from pydantic import BaseModel, ConfigDict, model_validator

from controller.cap.fetch import FetchFailed, fetch_limited, is_http, join
from controller.cap.parse import CapRejected, parse_xml_safely

PARALLEL_FETCHES = 4
_ATOM = "{http://www.w3.org/2005/Atom}"
_CAP_NAMESPACE_PREFIX = "urn:oasis:names:tc:emergency:cap:"
_SUFFIXES = (".xml", ".cap")
_FEED_ACCEPT = (
    "application/atom+xml, application/rss+xml, application/cap+xml, "
    "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
)
_CAP_ACCEPT = "application/cap+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"


class FeedItem(BaseModel):
    """One CAP message from a source (`data`, as received), or why it could not be had (`error`).

    `origin` says where it came from: a file path, the URL of a message, the source itself for a
    failure of the whole source, or `feed-url#entry-id` for an entry without a usable link.
    """

    model_config = ConfigDict(frozen=True)

    origin: str
    data: bytes | None = None
    error: str | None = None

    @model_validator(mode="after")
    def _data_or_error(self) -> Self:
        if (self.data is None) == (self.error is None):
            raise ValueError("a FeedItem has either data or an error, not both or neither")
        return self


async def read_source(
    source: str, *, client: httpx.AsyncClient, max_bytes: int, max_entries: int
) -> list[FeedItem]:
    """The CAP messages of `source` (a directory, a file or an http(s) URL); never raises for bad input."""
    if is_http(source):
        fetched, answered_at = await _fetch(client, source, _FEED_ACCEPT, max_bytes)
        if fetched.data is None:
            return [fetched]
        return await _read_document(source, fetched.data, answered_at, client, max_bytes, max_entries)
    if "://" in source:
        return [_failure(source, "only http(s) URLs, directories and files can be read")]
    local = await asyncio.to_thread(_read_local, source, max_bytes, max_entries)
    if isinstance(local, list):
        return local
    if local.data is None:
        return [local]
    return await _read_document(source, local.data, source, client, max_bytes, max_entries)


def _failure(origin: str, error: str) -> FeedItem:
    return FeedItem(origin=origin, error=error)


def _read_local(source: str, max_bytes: int, max_entries: int) -> list[FeedItem] | FeedItem:
    """A directory's items, or a file's bytes (a feed or a message, still to be told apart)."""
    path = Path(source)
    if path.is_dir():
        return _read_directory(source, max_bytes, max_entries)
    if path.is_file():
        return _read_file(source, max_bytes)
    reason = "is neither a directory nor a file" if path.exists() else "does not exist"
    return [_failure(source, f"{source} {reason}")]


def _read_file(origin: str, max_bytes: int) -> FeedItem:
    try:
        with open(origin, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_bytes:
                return _failure(origin, f"the file is {size} bytes; the limit is {max_bytes}")
            data = file.read(max_bytes + 1)
    except OSError as exc:
        return _failure(origin, f"reading {origin}: {exc.strerror or exc}")
    if len(data) > max_bytes:  # it grew after its size was taken
        return _failure(origin, f"the file is over the limit of {max_bytes} bytes")
    return FeedItem(origin=origin, data=data)


def _read_directory(source: str, max_bytes: int, max_entries: int) -> list[FeedItem]:
    try:
        files = sorted(
            path for path in Path(source).iterdir() if path.suffix.lower() in _SUFFIXES and path.is_file()
        )
    except OSError as exc:
        return [_failure(source, f"reading {source}: {exc.strerror or exc}")]
    items = [_read_file(str(path), max_bytes) for path in files[:max_entries]]
    if len(files) > max_entries:
        items.append(_left_out(source, len(files), "files", max_entries))
    return items


def _left_out(origin: str, count: int, what: str, max_entries: int) -> FeedItem:
    return _failure(
        origin,
        f"{origin} has {count} {what}; only the first {max_entries} were read, "
        f"the other {count - max_entries} were left out (the limit is {max_entries})",
    )


async def _fetch(client: httpx.AsyncClient, url: str, accept: str, max_bytes: int) -> tuple[FeedItem, str]:
    """The body at `url` (or why not), and the URL that answered after any redirects."""
    try:
        data, answered_at = await fetch_limited(client, url, max_bytes, accept)
    except FetchFailed as exc:
        return _failure(url, exc.reason), url
    return FeedItem(origin=url, data=data), answered_at


async def _read_document(
    origin: str, data: bytes, base_url: str, client: httpx.AsyncClient, max_bytes: int, max_entries: int
) -> list[FeedItem]:
    try:
        root = parse_xml_safely(data, "a feed or a CAP message", base_url=base_url)
    except CapRejected as exc:
        return [_failure(origin, exc.reason)]
    name = etree.QName(root)
    read_entry: Callable[[etree._Element, str, int], FeedItem | str]
    if name.localname == "alert":
        return [FeedItem(origin=origin, data=data)]
    if name.text == f"{_ATOM}feed":
        entries, read_entry, what = root.findall(f"{_ATOM}entry"), _atom_entry, "entries"
    elif name.text == "rss":
        entries, read_entry, what = root.findall("channel/item"), _rss_item, "items"
    else:
        return [
            _failure(
                origin,
                f"neither an Atom or RSS feed nor a CAP alert: the root element is {name.localname!r} "
                f"in namespace {name.namespace or '(none)'}",
            )
        ]
    first = entries[:max_entries]
    wanted = [read_entry(entry, origin, number) for number, entry in enumerate(first, start=1)]
    items = await _fetch_links(_unique(wanted), client, max_bytes)
    if len(entries) > max_entries:
        items.append(_left_out(origin, len(entries), what, max_entries))
    return items


def _unique(wanted: list[FeedItem | str]) -> list[FeedItem | str]:
    seen: set[str | bytes] = set()
    unique: list[FeedItem | str] = []
    for want in wanted:
        key = want if isinstance(want, str) else want.data
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        unique.append(want)
    return unique


async def _fetch_links(
    wanted: list[FeedItem | str], client: httpx.AsyncClient, max_bytes: int
) -> list[FeedItem]:
    """Each URL of `wanted` replaced by what fetching it gave, in the same order."""
    slots = asyncio.Semaphore(PARALLEL_FETCHES)

    async def have(want: FeedItem | str) -> FeedItem:
        if isinstance(want, FeedItem):
            return want
        async with slots:
            item, _answered_at = await _fetch(client, want, _CAP_ACCEPT, max_bytes)
            return item

    return list(await asyncio.gather(*(have(want) for want in wanted)))


def _atom_entry(entry: etree._Element, feed: str, number: int) -> FeedItem | str:
    """The entry's CAP message: inline (an item), a URL to fetch, or an error item."""
    origin = f"{feed}#{_text(entry.find(f'{_ATOM}id')) or f'entry-{number}'}"
    content = entry.find(f"{_ATOM}content")
    content_type = content.get("type", "").lower() if content is not None else ""
    if content is not None and ("xml" in content_type or "cap" in content_type):
        alert = next(content.iterchildren("{*}alert"), None)
        if alert is not None:
            # A copy is a document of its own, carrying the namespace declarations it uses.
            data = etree.tostring(copy.deepcopy(alert), xml_declaration=True, encoding="UTF-8")
            return FeedItem(origin=origin, data=data)
    links = [
        (link.get("rel", "alternate"), link.get("type", "").lower(), _resolve(link, link.get("href", "")))
        for link in entry.iterchildren(f"{_ATOM}link")
        if link.get("href", "").strip()
    ]
    if content is not None and content.get("src", "").strip():
        links.insert(0, ("alternate", content_type, _resolve(content, content.get("src", ""))))
    alternates = [url for rel, _type, url in links if rel == "alternate"]
    chosen = (
        next((url for _rel, type_, url in links if "cap" in type_), None)
        or next((url for url in alternates if _names_a_file(url)), None)
        or (alternates[0] if alternates and _has_cap_fields(entry) else None)
    )
    return _link(origin, chosen)


def _rss_item(item: etree._Element, feed: str, number: int) -> FeedItem | str:
    """The item's CAP message: a URL to fetch, or an error item."""
    link_element = item.find("link")
    link_text = _text(link_element)
    link = _resolve(link_element, link_text) if link_element is not None and link_text else None
    guid = _text(item.find("guid"))
    guid_url = guid if guid and is_http(guid) else None
    origin = f"{feed}#{guid or link or f'item-{number}'}"
    enclosures = [
        (enclosure.get("type", "").lower(), _resolve(enclosure, enclosure.get("url", "")))
        for enclosure in item.iterchildren("enclosure")
        if enclosure.get("url", "").strip()
    ]
    named = [link, *(url for _type, url in enclosures), guid_url]
    chosen = (
        next((url for type_, url in enclosures if "cap" in type_), None)
        or next((url for url in named if url and _names_a_file(url)), None)
        or link
    )
    return _link(origin, chosen)


def _link(origin: str, url: str | None) -> FeedItem | str:
    if url is None:
        return _failure(origin, "the entry links to no CAP message")
    if not is_http(url):
        return _failure(origin, f"the entry links to {url}, which is not an http(s) URL")
    return url


def _resolve(element: etree._Element, href: str) -> str:
    """`href` made absolute against the feed's address and any `xml:base` around it."""
    return join(element.base or "", href.strip())


# URLs come from the feed's author: one urllib cannot split (`http://[oops/`) is left as it is,
# and so is no http(s) URL, rather than an exception.
def _names_a_file(url: str) -> bool:
    try:
        return urlsplit(url).path.lower().endswith(_SUFFIXES)
    except ValueError:
        return False


def _has_cap_fields(entry: etree._Element) -> bool:
    return any(
        (etree.QName(child).namespace or "").startswith(_CAP_NAMESPACE_PREFIX)
        for child in entry.iterchildren(etree.Element)
    )


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    return (element.text or "").strip() or None
