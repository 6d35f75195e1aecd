"""The controller's signing keys: a directory holding the private keys (`<kid>.key`, PEM, readable
by its owner only) and the public key set terminals are given (`keyset.json`).

Every controller process of a deployment must use the same directory (or a copy of it). The first
one to start on an empty directory makes the first key. `cunxiang keys rotate` adds a key that
comes into force later and ends the current one a while after that, so terminals given the new
key set in between accept commands signed with either: no gap. The controller reads the key set
again when the file changes, and signs with the newest key in force.
"""

import contextlib
import os
import secrets
import tempfile
import threading
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devices.signing import KeySet, PublicKey, Signer, b64

KEYSET_FILE = "keyset.json"


class SigningKeyError(RuntimeError):
    """The key directory cannot be used; the message says why."""


def _write_private(path: Path, key: Ed25519PrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)


def _new_kid(at: datetime) -> str:
    return f"{at:%Y%m%d}-{secrets.token_hex(3)}"


class SigningKeys:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._keyset: KeySet | None = None
        self._signers: dict[str, Signer] = {}

    @property
    def keyset_path(self) -> Path:
        return self.directory / KEYSET_FILE

    def ensure(self, now: datetime) -> None:
        """Make the first key if the directory has none (racing processes: one wins, all use it)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.keyset_path.exists():
            self.refresh()
            return
        kid = _new_kid(now)
        key = Ed25519PrivateKey.generate()
        _write_private(self.directory / f"{kid}.key", key)
        first = KeySet(
            keys=[PublicKey(kid=kid, public_key=b64(key.public_key().public_bytes_raw()), valid_from=now)]
        )
        with contextlib.suppress(FileExistsError):
            self._publish(first, exclusive=True)
        self.refresh()

    def refresh(self) -> None:
        """Read the key set (and the private keys it names) again if the file changed."""
        try:
            mtime = self.keyset_path.stat().st_mtime
        except FileNotFoundError:
            raise SigningKeyError(f"no key set at {self.keyset_path}: start the controller once") from None
        if mtime == self._mtime:
            return
        with self._lock:
            keyset = KeySet.model_validate_json(self.keyset_path.read_text(encoding="utf-8"))
            signers = {}
            for public in keyset.keys:
                path = self.directory / f"{public.kid}.key"
                if not path.exists():
                    continue  # a key only verified here (signed elsewhere), or retired and removed
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(private, Ed25519PrivateKey):
                    raise SigningKeyError(f"{path} is not an Ed25519 private key")
                signers[public.kid] = Signer(public.kid, private)
            self._keyset, self._signers, self._mtime = keyset, signers, mtime

    def keyset(self) -> KeySet:
        if self._keyset is None:
            self.refresh()
        assert self._keyset is not None
        return self._keyset

    def signer(self, at: datetime) -> Signer:
        """The newest key in force at `at` that we hold privately."""
        usable = [k for k in self.keyset().keys if k.kid in self._signers and k.in_force(at)]
        if not usable:
            raise SigningKeyError(f"no signing key in force at {at.isoformat()} in {self.directory}")
        return self._signers[max(usable, key=lambda k: k.valid_from).kid]

    def rotate(self, valid_from: datetime, overlap: timedelta) -> PublicKey:
        """Add a key in force from `valid_from`; the keys in force then end `overlap` after it."""
        kid = _new_kid(valid_from)
        key = Ed25519PrivateKey.generate()
        _write_private(self.directory / f"{kid}.key", key)
        new = PublicKey(kid=kid, public_key=b64(key.public_key().public_bytes_raw()), valid_from=valid_from)
        ending = valid_from + overlap
        kept = [
            k.model_copy(update={"valid_until": ending})
            if k.in_force(valid_from) and (k.valid_until is None or k.valid_until > ending)
            else k
            for k in self.keyset().keys
        ]
        self._publish(KeySet(keys=[*kept, new]), exclusive=False)
        self.refresh()
        return new

    def _publish(self, keyset: KeySet, *, exclusive: bool) -> None:
        """Write the key set atomically (exclusive: only if there is none yet)."""
        with tempfile.NamedTemporaryFile("w", dir=self.directory, delete=False, encoding="utf-8") as out:
            out.write(keyset.model_dump_json(indent=2, exclude_none=True) + "\n")
        os.chmod(out.name, 0o644)
        try:
            if exclusive:
                os.link(out.name, self.keyset_path)
            else:
                os.replace(out.name, self.keyset_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out.name)
