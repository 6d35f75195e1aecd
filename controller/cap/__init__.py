"""CAP 1.2 in: parse safely, validate against the OASIS schema, map to a broadcast decision;
and out: our broadcasts as CAP, and an Atom feed of them.

    parse.py     bytes → a schema-valid `alert` element (size, DOCTYPE, namespace, XSD)
    model.py     element → CapAlert (the spec's rules the schema cannot express)
    rules.py     the operator's tables: levels, languages, geocodes, expiry
    geometry.py  polygons and circles → terminals
    mapping.py   CapAlert → CapDecision (broadcast, update, cancel, store_only, rejected)
    feeds.py     a directory, a file or an Atom/RSS feed → FeedItems (a message's bytes, or why not)
    export.py    a stored broadcast → an `alert` element our own mapping reads back as it
    atom.py      exported alerts → an Atom 1.0 feed, each alert embedded in its entry
    fetch.py     http(s) downloads within a byte limit (feeds, linked messages, audio)
    intake.py    receiving a message: stored as received, carried out through the controller
    poller.py    the configured feeds, read on an interval into the intake

Errors: CapRejected (a ValueError with `reason`) inside; `ingest_cap` turns it into a decision.
"""

from controller.cap.feeds import FeedItem, read_source
from controller.cap.geometry import TerminalPosition
from controller.cap.mapping import (
    CapAudio,
    CapBroadcast,
    CapCancel,
    CapDecision,
    CapOutcome,
    CapRejection,
    CapStoreOnly,
    CapUpdate,
    decide,
    ingest_cap,
    read_cap,
)
from controller.cap.model import CapAlert, CapReference, read_alert
from controller.cap.parse import CapRejected, parse_cap
from controller.cap.rules import CapRules, LevelRule

__all__ = [
    "CapAlert",
    "CapAudio",
    "CapBroadcast",
    "CapCancel",
    "CapDecision",
    "CapOutcome",
    "CapReference",
    "CapRejected",
    "CapRejection",
    "CapRules",
    "CapStoreOnly",
    "CapUpdate",
    "FeedItem",
    "LevelRule",
    "TerminalPosition",
    "decide",
    "ingest_cap",
    "parse_cap",
    "read_alert",
    "read_cap",
    "read_source",
]
