"""The prepared false-alarm correction (误报更正): what goes out when an alert was sent in error.

In 2018 Hawaii's false missile alert stood for 38 minutes because no correction had been prepared.
Here one action sends this one, to the same target, at the same level as the alert it corrects.
"""

import json
from datetime import datetime
from zoneinfo import ZoneInfo

from controller.broadcasts import BroadcastRequest
from controller.confirmation import LEVELS
from controller.models import Broadcast
from devices.messages import BroadcastStatus
from devices.priority import BroadcastKind

# Long enough for every terminal that heard the alert, or missed it while offline, to hear this.
CORRECTION_EXPIRES_IN_S = 2 * 3600

_TEXT = {
    "zh": "误报更正：{time}发布的{what}为误报，现予撤销。没有危险，请大家不要惊慌，照常生产生活。",
    "en": "Correction: the {what} issued at {time} was a false alarm and is withdrawn. "
    "There is no danger. Please carry on as normal.",
}


def correction_text(original: Broadcast, timezone: str) -> str:
    """The prepared correction, in the language the alert was in (Chinese unless it was English)."""
    language = _language(original)
    local = original.issued_at.astimezone(ZoneInfo(timezone))
    if language == "en":
        level = f"level {LEVELS[original.level][0]} " if original.level else ""
        what = f"{level}{original.event or original.kind} alert"
        return _TEXT["en"].format(time=local.strftime("%H:%M on %d %B"), what=what)
    level = f"{LEVELS[original.level][0]}级" if original.level else ""
    what = (
        f"{level}{original.event or ''}{'预警信息' if original.kind == BroadcastKind.EMERGENCY else '广播'}"
    )
    return _TEXT["zh"].format(time=_chinese_time(local), what=what)


def correction_request(original: Broadcast, timezone: str, text: str | None) -> BroadcastRequest:
    """A request for the correction of `original`: its target, kind, level, status and issuer."""
    return BroadcastRequest(
        kind=BroadcastKind(original.kind),
        level=original.level,
        regions=original.regions,
        terminals=original.terminal_ids or [],
        issuer_region=original.issuer_region,
        text=text or correction_text(original, timezone),
        language="en" if _language(original) == "en" else "zh-CN",
        status=BroadcastStatus(original.status or "actual"),
        event=original.event,
        expires_in=CORRECTION_EXPIRES_IN_S,
    )


def _language(original: Broadcast) -> str:
    content = json.loads(original.command).get("content", {})
    return str(content.get("language", "zh-CN")).split("-")[0].lower()


def _chinese_time(at: datetime) -> str:
    return f"{at.month}月{at.day}日{at.hour}时{at.minute:02d}分"
