"""Signed commands: the controller signs every command and cancel it sends; a terminal plays only
what verifies against one of the keys it holds, sent recently.

Ed25519 (RFC 8032) over the message's canonical bytes (`WireModel.signed_bytes`: sorted keys, no
spaces, UTF-8, absent members left out, the signature itself left out). Each copy the controller
sends carries `sent_at`, signed with the rest, so a copy recorded off the air and played back later
is refused however long the command itself stays valid; a copy replayed within the window is a
command id the terminal has seen, and is not played twice.

A terminal holds a key set: each public key with the times it is valid for. The controller signs
with its newest key that has come into force, so a rotation announced ahead (the new key given to
terminals before it is used; the old one kept valid a while after) has no gap.
"""

import base64
import binascii
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from devices.messages import Cancel, Command, Signature, SignedMessage

DEFAULT_WINDOW = timedelta(minutes=5)
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

Signed = TypeVar("Signed", bound=SignedMessage)


class Refusal(StrEnum):
    """Why a terminal refuses a command before anything else (its `rejected` reason)."""

    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    KEY_NOT_VALID = "key_not_valid"
    """signed with a key not in force when it was sent (retired, or not yet valid)"""
    STALE = "stale"
    """sent further from the terminal's clock than the window allows: a replay, or a clock to set"""


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PublicKey(BaseModel):
    """One key of a terminal's key set, as it is written in the key set file."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kid: Annotated[str, Field(pattern=KEY_ID_PATTERN)]
    public_key: Annotated[str, Field(min_length=43, max_length=44, description="raw Ed25519, base64url")]
    valid_from: AwareDatetime
    valid_until: AwareDatetime | None = None

    def in_force(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_until is None or at < self.valid_until)


class KeySet(BaseModel):
    """The controller's public keys a terminal trusts (the `keys.json` a terminal is given)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    keys: Annotated[list[PublicKey], Field(min_length=1, max_length=16)]

    def find(self, kid: str) -> PublicKey | None:
        return next((key for key in self.keys if key.kid == kid), None)


def refusal(message: Command | Cancel, keys: KeySet, now: datetime, window: timedelta) -> Refusal | None:
    """Why this message must not be acted on, or None if it is genuine and fresh."""
    if message.sig is None or message.sent_at is None:
        return Refusal.UNSIGNED
    key = keys.find(message.sig.kid)
    if key is None:
        return Refusal.UNKNOWN_KEY
    try:
        Ed25519PublicKey.from_public_bytes(unb64(key.public_key)).verify(
            unb64(message.sig.value), message.signed_bytes()
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return Refusal.BAD_SIGNATURE
    if not key.in_force(message.sent_at):
        return Refusal.KEY_NOT_VALID
    if abs(now - message.sent_at) > window:
        return Refusal.STALE
    return None


class Signer:
    """A private key in force from `valid_from`, and what it signs with."""

    def __init__(self, kid: str, private_key: Ed25519PrivateKey) -> None:
        self.kid = kid
        self._key = private_key

    def public_key(self) -> str:
        return b64(self._key.public_key().public_bytes_raw())

    def sign(self, message: Signed, sent_at: datetime) -> Signed:
        """The message stamped `sent_at` and signed."""
        stamped = message.model_copy(update={"sent_at": sent_at, "sig": None})
        value = b64(self._key.sign(stamped.signed_bytes()))
        return stamped.model_copy(update={"sig": Signature(kid=self.kid, value=value)})
