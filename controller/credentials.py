"""Terminals' MQTT credentials: a random secret shown once, stored only as a hash.

The hash is in Mosquitto's own password-file format (`$7$`: PBKDF2-HMAC-SHA512, 12-byte salt), so
the broker's password file can be generated from the registry without ever keeping a secret. The
secrets are 192 random bits, far beyond guessing, so the key stretching only has to keep the hash
from being a password; 1,000 iterations keep a county's reconnect storm cheap for the broker.
"""

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 1000
_SALT_BYTES = 12


def new_secret() -> str:
    """A fresh MQTT password for one terminal (32 URL-safe characters)."""
    return secrets.token_urlsafe(24)


def mosquitto_hash(secret: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """`$7$<iterations>$<salt>$<hash>`, as `mosquitto_passwd` writes it."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify(secret: str, stored: str) -> bool:
    """Whether `secret` matches a `$7$` hash."""
    try:
        _, seven, iterations, salt, _digest = stored.split("$")
        if seven != "7":
            return False
        expected = mosquitto_hash(secret, salt=base64.b64decode(salt), iterations=int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(expected, stored)
