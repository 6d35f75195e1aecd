"""Where the broker is: its URL (mqtt://, or mqtts:// over TLS) and the one `ssl.SSLContext`
every client of the broker uses.

The controller, the agent on a real terminal and the simulated terminals all get their broker
address here, so they check the broker the same way: its certificate must chain to the CA bundle
given (by default the system's trust store) and name the host in the broker URL, over TLS 1.2 or
newer.
"""

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEME = "mqtts"
PLAIN_PORT = 1883
TLS_PORT = 8883


def is_tls_url_scheme(scheme: str) -> bool:
    """Whether a broker URL with this scheme is spoken over TLS; ValueError for an unknown scheme."""
    if scheme == TLS_SCHEME:
        return True
    if scheme in PLAIN_SCHEMES:
        return False
    raise ValueError(f"unknown MQTT URL scheme {scheme!r}: use mqtt:// or mqtts://")


def client_context(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client context that trusts `ca_file` (or the system's store when None), checks the broker's
    host name, refuses anything older than TLS 1.2, and presents `cert_file` (with `key_file`, or a
    key inside `cert_file`) to a broker that requires client certificates.

    Raises OSError (ssl.SSLError among them) when a file cannot be read or holds no usable PEM."""
    # create_default_context already sets CERT_REQUIRED and check_hostname; stated again because
    # they are the point of this function.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    """set for an mqtts:// broker: how its certificate is checked (client_context)"""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> "BrokerAddress":
        """The broker at mqtt://, tcp:// or mqtts:// `url`; the files only matter for mqtts://."""
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"no host in broker URL {url!r}")
        tls = is_tls_url_scheme(parts.scheme)
        return cls(
            host=parts.hostname,
            port=parts.port or (TLS_PORT if tls else PLAIN_PORT),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=client_context(ca_file, cert_file, key_file) if tls else None,
        )

    def __str__(self) -> str:
        return f"{TLS_SCHEME if self.tls else 'mqtt'}://{self.host}:{self.port}"
