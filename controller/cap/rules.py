"""The operator's tables for CAP: levels, languages, geocodes, expiry (docs/cap.md explains them).

Each table is a setting (`CUNXIANG_CAP_*`, JSON for the structured ones), gathered here into one
value so the mapping stays a pure function of the message, these rules and the terminal positions.
"""

from collections.abc import Sequence
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from controller.cap.model import Certainty, Info, Severity, Urgency
from devices.identifiers import is_region_code

NOTICE: Final = "notice"
Outcome = Literal[1, 2, 3, 4, "notice"]
"""an emergency level (1 特别重大 … 4 一般), or a notice: told, not alarmed"""


class LevelRule(BaseModel):
    """One row of the level table: an empty set matches any value; the first matching row wins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: frozenset[Severity] = frozenset()
    urgency: frozenset[Urgency] = frozenset()
    certainty: frozenset[Certainty] = frozenset()
    outcome: Outcome

    def matches(self, info: Info) -> bool:
        return (
            (not self.severity or info.severity in self.severity)
            and (not self.urgency or info.urgency in self.urgency)
            and (not self.certainty or info.certainty in self.certainty)
        )


def _rule(outcome: Outcome, severity: str = "", urgency: str = "", certainty: str = "") -> LevelRule:
    return LevelRule(
        severity=frozenset(Severity(s) for s in severity.split()),
        urgency=frozenset(Urgency(u) for u in urgency.split()),
        certainty=frozenset(Certainty(c) for c in certainty.split()),
        outcome=outcome,
    )


DEFAULT_LEVEL_RULES: tuple[LevelRule, ...] = (
    # It is over, or not expected to happen: say so, do not sound an alarm.
    _rule(NOTICE, urgency="Past"),
    _rule(NOTICE, certainty="Unlikely"),
    _rule(1, severity="Extreme", urgency="Immediate Expected", certainty="Observed Likely"),
    _rule(2, severity="Extreme"),
    _rule(2, severity="Severe", urgency="Immediate Expected", certainty="Observed Likely"),
    _rule(3, severity="Severe"),
    _rule(3, severity="Moderate", urgency="Immediate Expected", certainty="Observed Likely"),
    _rule(NOTICE, severity="Minor", urgency="Future"),
    _rule(4),
)

DEFAULT_LANGUAGES = ("zh-CN", "zh", "en")
FEED_NAME = r"^[A-Za-z0-9_.-]{1,40}$"
DEFAULT_ADMIN_GEOCODE_NAMES = frozenset({"China-admin", "GB/T 2260", "行政区划代码"})


class CapRules(BaseModel):
    """Everything configurable about turning a CAP alert into a broadcast."""

    model_config = ConfigDict(frozen=True)

    county_region: str
    level_rules: Annotated[tuple[LevelRule, ...], Field(min_length=1)] = DEFAULT_LEVEL_RULES
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    admin_geocode_names: frozenset[str] = DEFAULT_ADMIN_GEOCODE_NAMES
    geocodes: dict[str, dict[str, list[str]]] = {}
    """valueName → value → our region codes"""
    default_expires_s: int = 3600
    max_expires_s: int = 7 * 24 * 3600
    text_max_chars: int = 4000

    def outcome(self, info: Info) -> Outcome:
        """The level table's answer for one info block; an all-clear is always a notice."""
        if "AllClear" in info.response_types:
            return NOTICE
        for rule in self.level_rules:
            if rule.matches(info):
                return rule.outcome
        # A table without a catch-all row: the mildest emergency, never silence.
        return 4

    def regions_for(self, value_name: str, value: str) -> list[str]:
        """Our regions a geocode names, clipped to the county; none when it lies elsewhere."""
        if value_name in self.admin_geocode_names:
            candidates = [admin_code(value)]
        else:
            candidates = list(self.geocodes.get(value_name, {}).get(value, []))
        found = []
        for code in candidates:
            clipped = self._within_county(code)
            if clipped is not None and clipped not in found:
                found.append(clipped)
        return found

    def _within_county(self, code: str | None) -> str | None:
        if code is None or not is_region_code(code):
            return None
        if code.startswith(self.county_region):
            return code
        # A warning for the whole city or province covers the whole county.
        if self.county_region.startswith(code):
            return self.county_region
        return None


def admin_code(value: str) -> str | None:
    """Our region code for an administrative division code as upstream systems write it.

    GB/T 2260 pads to 6 digits (421200 is the city 4212, 420000 the province 42) and the
    statistical codes pad to 12 (421202001000 is the township 421202001).
    """
    code = value.strip()
    if not code.isascii() or not code.isdigit():
        return None
    if len(code) == 12:
        code = code.removesuffix("000")
        if len(code) == 9:
            code = code.removesuffix("000")
    if len(code) == 6:
        code = code.removesuffix("00")
        if len(code) == 4:
            code = code.removesuffix("00")
    return code if is_region_code(code) else None


def choose_language(infos: Sequence[Info], languages: Sequence[str]) -> str | None:
    """The language to broadcast in: the first preference an info block has, else the first block's.

    A preference with a region (zh-CN) matches that tag alone; one without (zh) matches itself and
    every regional variant (zh-TW, zh-Hans). Tags compare case-insensitively.
    """
    tags = [info.language for info in infos]
    for preference in languages:
        wanted = preference.lower()
        for tag in tags:
            lowered = tag.lower()
            if lowered == wanted or ("-" not in wanted and lowered.startswith(wanted + "-")):
                return tag
    return tags[0] if tags else None


class CapFeed(BaseModel):
    """A source the poller reads: a directory of CAP files, one file, or an Atom/RSS feed by URL.

    Its alerts are received as `feed:<name>`, an operator over `region` (default: the county), so
    they meet the same authority and two-person rules as an API key's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=FEED_NAME)]
    source: Annotated[str, Field(min_length=1, max_length=2000)]
    region: str | None = None
    headers: dict[str, SecretStr] = {}
    """sent with every request to the source's own host (its credentials: {"X-API-Key": "cxk_…"}),
    never to other hosts its entries link to"""
