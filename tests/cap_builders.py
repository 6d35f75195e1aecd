"""Builders of small CAP 1.2 messages for the tests of controller/cap; each validates unless told."""

CAP12 = "urn:oasis:names:tc:emergency:cap:1.2"
SENT = "2026-11-27T10:00:00+08:00"


def area_xml(
    description: str = "咸安区",
    polygons: tuple[str, ...] = (),
    circles: tuple[str, ...] = (),
    geocodes: tuple[tuple[str, str], ...] = (("China-admin", "421202"),),
) -> str:
    return (
        f"<area><areaDesc>{description}</areaDesc>"
        + "".join(f"<polygon>{p}</polygon>" for p in polygons)
        + "".join(f"<circle>{c}</circle>" for c in circles)
        + "".join(f"<geocode><valueName>{n}</valueName><value>{v}</value></geocode>" for n, v in geocodes)
        + "</area>"
    )


def info_xml(
    language: str | None = "zh-CN",
    event: str = "暴雨",
    urgency: str = "Immediate",
    severity: str = "Severe",
    certainty: str = "Observed",
    response: str | None = None,
    effective: str | None = None,
    expires: str | None = "2026-11-27T16:00:00+08:00",
    headline: str | None = "暴雨红色预警",
    description: str | None = "未来三小时降雨量将达100毫米以上。",
    instruction: str | None = "请立即转移到安全地带。",
    resources: tuple[str, ...] = (),
    areas: tuple[str, ...] | None = None,
) -> str:
    optional = [
        ("language", language),
        ("category", "Met"),
        ("event", event),
        ("responseType", response),
        ("urgency", urgency),
        ("severity", severity),
        ("certainty", certainty),
        ("effective", effective),
        ("expires", expires),
        ("headline", headline),
        ("description", description),
        ("instruction", instruction),
    ]
    return (
        "<info>"
        + "".join(f"<{name}>{value}</{name}>" for name, value in optional if value is not None)
        + "".join(resources)
        + "".join(areas if areas is not None else (area_xml(),))
        + "</info>"
    )


def resource_xml(
    mime_type: str = "audio/mpeg",
    uri: str | None = None,
    deref: str | None = None,
    size: int | None = None,
    digest: str | None = None,
    description: str = "预警音频",
) -> str:
    optional = [("size", size), ("uri", uri), ("derefUri", deref), ("digest", digest)]
    return (
        f"<resource><resourceDesc>{description}</resourceDesc><mimeType>{mime_type}</mimeType>"
        + "".join(f"<{name}>{value}</{name}>" for name, value in optional if value is not None)
        + "</resource>"
    )


def cap_xml(
    *infos: str,
    identifier: str = "XN-2026-001",
    sender: str = "qxj@xianning.gov.cn",
    sent: str = SENT,
    status: str = "Actual",
    msg_type: str = "Alert",
    scope: str = "Public",
    references: str | None = None,
    namespace: str = CAP12,
    prolog: str = '<?xml version="1.0" encoding="UTF-8"?>\n',
) -> bytes:
    """A CAP message; with no `infos`, one default info block (an Update or Cancel: none)."""
    if not infos and msg_type == "Alert":
        infos = (info_xml(),)
    return (
        f'{prolog}<alert xmlns="{namespace}">'
        f"<identifier>{identifier}</identifier><sender>{sender}</sender><sent>{sent}</sent>"
        f"<status>{status}</status><msgType>{msg_type}</msgType><scope>{scope}</scope>"
        + (f"<references>{references}</references>" if references is not None else "")
        + "".join(infos)
        + "</alert>"
    ).encode()
