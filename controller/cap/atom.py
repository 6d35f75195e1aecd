"""The Atom 1.0 feed of current alerts, each CAP alert embedded whole in its entry.

Pure: built from exported `alert` elements alone, so an entry can never say something its alert
does not. A consumer needs no second request, yet each entry links to its alert's own URL.
"""

import copy
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from lxml import etree

from controller.cap.export import CAP_MEDIA_TYPE, CapPublisher, cap_time
from controller.cap.model import read_alert

ATOM_NAMESPACE: Final = "http://www.w3.org/2005/Atom"
ATOM_MEDIA_TYPE: Final = "application/atom+xml"


def entry_id(sender: str, identifier: str) -> str:
    """An entry's permanent id: the alert's, as CAP makes it unique (sender and identifier)."""
    return f"urn:cunxiang:{sender}:{identifier}"


def atom_feed(
    entries: Sequence[tuple[etree._Element, str]],
    *,
    publisher: CapPublisher,
    title: str,
    author: str,
    self_url: str,
    now: datetime,
) -> bytes:
    """The feed of `entries` (each alert, and the URL it is served at), in the order given."""
    feed = etree.Element(_name("feed"), nsmap={None: ATOM_NAMESPACE})
    alerts = [alert for alert, _url in entries]
    read = [read_alert(alert) for alert in alerts]
    _add(feed, "id", entry_id(publisher.sender, "feed"))
    _add(feed, "title", title)
    # The newest alert's time would stay put when one is cancelled and drops out: a consumer
    # trusting `updated` would miss that, so the feed says when it was made.
    _add(feed, "updated", cap_time(now, publisher.timezone))
    etree.SubElement(_add(feed, "author"), _name("name")).text = author
    etree.SubElement(feed, _name("link"), rel="self", type=ATOM_MEDIA_TYPE, href=self_url)
    for (element, url), alert in zip(entries, read, strict=True):
        info = alert.infos[0] if alert.infos else None
        entry = etree.SubElement(feed, _name("entry"))
        _add(entry, "id", entry_id(alert.sender, alert.identifier))
        _add(entry, "title", (info.headline or info.event) if info else alert.identifier)
        _add(entry, "updated", cap_time(alert.sent, publisher.timezone))
        if info is not None and (info.description or info.headline):
            _add(entry, "summary", info.description or info.headline or "")
        etree.SubElement(entry, _name("link"), rel="alternate", type=CAP_MEDIA_TYPE, href=url)
        # An XML media type: the content is the alert element itself, in its own namespace.
        _add(entry, "content", None, type=CAP_MEDIA_TYPE).append(copy.deepcopy(element))
    return etree.tostring(feed, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _name(local: str) -> str:
    return f"{{{ATOM_NAMESPACE}}}{local}"


def _add(parent: etree._Element, local: str, text: str | None = None, **attributes: str) -> etree._Element:
    element = etree.SubElement(parent, _name(local), attributes)
    element.text = text
    return element
