"""Reading a CAP message safely: size, well-formedness, no DTD, the 1.2 namespace, the OASIS schema.

The parser resolves no entities, loads no DTD and touches no network, and any DOCTYPE is refused
outright: CAP never needs one, and a DOCTYPE is how entity expansion and external fetches get in.
`parse_xml_safely` is that step alone, for the other XML we read (the feeds of feeds.py).
The schema is the OASIS `cap12.xsd`, shipped with the package (controller/data/cap12.xsd.SOURCE.md);
it imports nothing, and its one wildcard (the XML signature) is `lax`, so validation loads nothing.
"""

import re
from functools import cache
from importlib import resources

from lxml import etree

CAP12_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
_OLDER_NAMESPACES = {
    "urn:oasis:names:tc:emergency:cap:1.1": "1.1",
    "http://www.incident.com/cap/1.0": "1.0",
}
_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_]")
_NAMESPACE_IN_MESSAGE = re.compile(r"\{" + re.escape(CAP12_NAMESPACE) + r"\}")


class CapRejected(ValueError):
    """A CAP message that cannot be taken in; `reason` says precisely why, for the sender."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
    )


@cache
def cap12_schema() -> etree.XMLSchema:
    """The OASIS CAP 1.2 schema, parsed once."""
    source = resources.files("controller").joinpath("data", "cap12.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(source, _safe_parser()))


def parse_xml_safely(data: bytes, what: str, base_url: str | None = None) -> etree._Element:
    """The root element of well-formed XML without a DOCTYPE; raises CapRejected.

    `what` names the document in the reason (`a DOCTYPE is not allowed in {what} …`). `base_url`
    is where the document came from, so that `element.base` resolves relative links (and
    `xml:base`); nothing is loaded from it. The caller checks the size first.
    """
    no_doctype = f"a DOCTYPE is not allowed in {what} (no DTDs, no entities)"
    first_element = _FIRST_ELEMENT.search(data)
    # Refused before parsing too, so an entity bomb gets this reason rather than libxml2's alarm;
    # the check after parsing catches a DOCTYPE in an encoding this byte search cannot read.
    if b"<!DOCTYPE" in data[: first_element.start() if first_element else len(data)]:
        raise CapRejected(no_doctype)
    try:
        root = etree.fromstring(data, _safe_parser(), base_url=base_url)
    except etree.XMLSyntaxError as exc:
        raise CapRejected(f"not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise CapRejected(no_doctype)
    return root


def parse_cap(data: bytes, max_bytes: int) -> etree._Element:
    """The validated `alert` element of a CAP 1.2 message; raises CapRejected.

    A UTF-8 byte-order mark is accepted, and so is any prefix (`cap:alert`): the namespace is
    what identifies CAP 1.2.
    """
    if len(data) > max_bytes:
        raise CapRejected(f"the message is {len(data)} bytes; the limit is {max_bytes}")
    if not data.strip():
        raise CapRejected("the message is empty")
    root = parse_xml_safely(data, "a CAP message")
    name = etree.QName(root)
    if name.namespace in _OLDER_NAMESPACES:
        version = _OLDER_NAMESPACES[name.namespace]
        raise CapRejected(f"CAP {version} is not supported; send 1.2 (namespace {CAP12_NAMESPACE})")
    if name.namespace != CAP12_NAMESPACE or name.localname != "alert":
        raise CapRejected(
            f"the root element is {name.localname!r} in namespace {name.namespace or '(none)'}, "
            f"not a CAP 1.2 alert ({CAP12_NAMESPACE})"
        )
    schema = cap12_schema()
    if not schema.validate(root):
        error = schema.error_log[0]
        message = _NAMESPACE_IN_MESSAGE.sub("", error.message)
        raise CapRejected(f"not valid CAP 1.2: line {error.line}: {message}")
    return root
