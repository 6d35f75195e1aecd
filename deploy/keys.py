"""`cunxiang keys`: the controller's command-signing keys (see controller/signing_keys.py).

    cunxiang keys export                 print the public key set terminals must hold
    cunxiang keys rotate --in 7d         a new key in force in 7 days; the current one ends a day later

Rotating without a gap: run `rotate`, give every terminal the new key set (it holds both keys)
before the new key comes into force, and keep the old one until the end of the overlap.
"""

import re
import sys
from datetime import timedelta

from controller.settings import Settings
from controller.signing_keys import SigningKeyError, SigningKeys
from devices.messages import now_utc

_SPAN = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_span(text: str) -> timedelta:
    """`90s`, `15m`, `12h`, `7d`."""
    found = _SPAN.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"not a span of time: {text!r} (use e.g. 90s, 15m, 12h, 7d)")
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def export_keys(settings: Settings) -> int:
    keys = SigningKeys(settings.signing_key_dir)
    try:
        keys.ensure(now_utc())
    except (SigningKeyError, OSError) as exc:
        print(f"cannot read the signing keys: {exc}", file=sys.stderr)
        return 2
    print(keys.keyset().model_dump_json(indent=2, exclude_none=True))
    return 0


def rotate_keys(settings: Settings, after: str, overlap: str) -> int:
    try:
        lead, kept = parse_span(after), parse_span(overlap)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    keys = SigningKeys(settings.signing_key_dir)
    now = now_utc()
    try:
        keys.ensure(now)
        new = keys.rotate(now + lead, kept)
    except (SigningKeyError, OSError) as exc:
        print(f"cannot rotate the signing keys: {exc}", file=sys.stderr)
        return 2
    print(
        f"new key {new.kid} in force from {new.valid_from.isoformat()}; the current key ends "
        f"{(new.valid_from + kept).isoformat()}.\nGive every terminal the new key set before then:\n"
        f"{keys.keyset_path}",
        file=sys.stderr,
    )
    print(keys.keyset().model_dump_json(indent=2, exclude_none=True))
    return 0
