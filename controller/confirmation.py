"""What a broadcast will do, in words, before anyone sends it.

In 2018 an operator in Hawaii sent a live missile alert meaning to send a drill: the choice was one
line in a list, and the confirmation did not say which one it was. Here the preview of a request
states the level, the event, the target and how many villages and terminals it reaches, and whether
it is real or a drill, in Chinese and in English; a person sending an actual emergency must echo
the preview's `confirmation`, a keyed digest of the very request and its reach, so the API itself
refuses a live alert that was never previewed (or whose target changed since).
"""

import hashlib
import hmac
from dataclasses import dataclass

from sqlmodel import Session

from controller.broadcasts import BroadcastRequest, Target
from controller.regions import region_names
from devices.identifiers import RegionLevel, region_level
from devices.messages import BroadcastStatus
from devices.priority import BroadcastKind

LEVELS = {
    1: ("I", "特别重大", "red", "红色"),
    2: ("II", "重大", "orange", "橙色"),
    3: ("III", "较大", "yellow", "黄色"),
    4: ("IV", "一般", "blue", "蓝色"),
}
KINDS = {
    BroadcastKind.EMERGENCY: ("emergency broadcast", "应急广播"),
    BroadcastKind.NOTICE: ("notice", "通知"),
    BroadcastKind.PROGRAMME: ("programme", "节目"),
}
STATUS_WORDS = {
    BroadcastStatus.ACTUAL: ("ACTUAL — not a drill", "真实发布，不是演练"),
    BroadcastStatus.EXERCISE: ("EXERCISE — announced as a drill (演练)", "演练，终端将播报“演练”"),
    BroadcastStatus.TEST: ("TEST — announced as a system test (测试)", "测试，终端将播报“测试”"),
}
_NAMED = 3


@dataclass(frozen=True)
class Summary:
    text_en: str
    text_zh: str
    terminals: int
    villages: int
    townships: int
    needs_approval: bool
    confirmation: str


def needs_confirmation(request: BroadcastRequest) -> bool:
    return request.kind is BroadcastKind.EMERGENCY and request.status is BroadcastStatus.ACTUAL


def confirmation_code(key: str, request: BroadcastRequest, terminals: int) -> str:
    """A digest of the request (all of it but the confirmation itself) and of how many terminals
    it reaches, keyed so a client cannot make one up without asking for the preview."""
    body = request.model_dump_json(exclude={"confirmation"}) + f"|{terminals}"
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()[:20]


def summarise(
    session: Session, key: str, request: BroadcastRequest, target: Target, needs_approval: bool
) -> Summary:
    areas = set(target.reached.values())
    villages = {code for code in areas if region_level(code) is RegionLevel.VILLAGE}
    townships = {code[:9] for code in areas if len(code) >= 9}
    names = region_names(session, target.regions)
    shown = [names.get(code, code) for code in target.regions[:_NAMED]]
    more = len(target.regions) - len(shown)
    where_en = ", ".join(shown) + (f" and {more} more" if more else "")
    where_zh = "、".join(shown) + (f"等{len(target.regions)}个区域" if more else "")
    if target.terminals:
        where_en += f" (and {len(target.terminals)} terminals named one by one)"
        where_zh += f"（另{len(target.terminals)}台单独指定的终端）"
    kind_en, kind_zh = KINDS[request.kind]
    event_en = f"{request.event} " if request.event else ""
    event_zh = request.event or ""
    if request.level is not None:
        roman, grade, colour, colour_zh = LEVELS[int(request.level)]
        what_en = f"Level {roman} ({grade}, {colour}) {event_en}{kind_en}"
        what_zh = f"{roman}级（{grade}，{colour_zh}）{event_zh}{kind_zh}"
    else:
        what_en, what_zh = f"{event_en}{kind_en}".capitalize(), f"{event_zh}{kind_zh}"
    status_en, status_zh = STATUS_WORDS[request.status]
    n = len(target.reached)
    text_en = (
        f"{what_en} to {where_en}: {len(villages)} villages in {len(townships)} townships, {n} terminals. "
        f"{status_en}."
    )
    text_zh = (
        f"向{where_zh}（{len(townships)}个乡镇{len(villages)}个村，共{n}台终端）发布{what_zh}。{status_zh}。"
    )
    if needs_approval:
        text_en += " It waits for a second person's approval before it is sent."
        text_zh += "需经第二人审批后发送。"
    return Summary(
        text_en=text_en,
        text_zh=text_zh,
        terminals=n,
        villages=len(villages),
        townships=len(townships),
        needs_approval=needs_approval,
        confirmation=confirmation_code(key, request, n),
    )
